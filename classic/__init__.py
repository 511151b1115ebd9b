"""The RL textbook as runnable code: tabular methods, DQN, REINFORCE, A2C and PPO on gymnasium.

`from classic import value_iteration` works as before, but the tabular methods (and gymnasium, which they need)
are imported on first use (PEP 562), so `import rlhf`, which only needs `classic.functional`, stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from classic import functional

_TABULAR = (
    "TDResult",
    "expected_sarsa",
    "greedy_returns_by_start",
    "greedy_rollouts",
    "linear_sarsa",
    "policy_iteration",
    "q_learning",
    "sarsa",
    "td_control",
    "value_iteration",
)

__all__ = ["functional", *_TABULAR]


def __getattr__(name: str) -> Any:
    if name in _TABULAR:
        value = getattr(importlib.import_module("classic.tabular"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'classic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
