"""Text environments for language models: gymnasium envs whose observations and actions are strings.

`TextEnv` wraps any discrete-action env (describe the observation as text, parse the reply into an action);
the factories below ship text versions of FrozenLake, Taxi and the project's own envs, plus a tool-use env
(`CalculatorEnv`). `make_text_env("frozenlake", size=8)` builds one by name. `check_text_env(env)` says when an
env is not a text env.

This package imports gymnasium, so `rlhf/__init__.py` does not import it: `import rlhf` stays light.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

from rlhf.envs.calculator import CalculatorEnv, make_calculator, safe_eval
from rlhf.envs.games import make_checkers, make_frozenlake, make_maze, make_snake, make_taxi, make_trading
from rlhf.envs.text import CHARSET, TextEnv, check_text_env, text_space, word_parser

TEXT_ENVS: dict[str, Callable[..., gym.Env]] = {
    "calculator": make_calculator,
    "checkers": make_checkers,
    "frozenlake": make_frozenlake,
    "maze": make_maze,
    "snake": make_snake,
    "taxi": make_taxi,
    "trading": make_trading,
}


def make_text_env(name: str, **kwargs) -> gym.Env:
    """The text env registered as `name` in TEXT_ENVS, built with `kwargs`."""
    if name not in TEXT_ENVS:
        raise ValueError(f"unknown text env {name!r}; valid names: {', '.join(sorted(TEXT_ENVS))}")
    return TEXT_ENVS[name](**kwargs)


__all__ = [
    "CHARSET",
    "TEXT_ENVS",
    "CalculatorEnv",
    "TextEnv",
    "check_text_env",
    "make_calculator",
    "make_checkers",
    "make_frozenlake",
    "make_maze",
    "make_snake",
    "make_taxi",
    "make_text_env",
    "make_trading",
    "safe_eval",
    "text_space",
    "word_parser",
]
