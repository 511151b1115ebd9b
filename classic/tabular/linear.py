"""Episodic semi-gradient SARSA with linear action values (Sutton & Barto, Section 10.1).

q(s, a, w) = w . x(s, a), and after each step
    w <- w + alpha [R + gamma q(S', A', w) - q(S, A, w)] x(S, A)        (S&B eq. 10.1 for SARSA)
with target R at a terminal transition. It is the tabular SARSA of `td.py` with a one-hot x(s, a) replaced by
hand-made features, for boards too big for a table (checkers). Legal actions come from `info["action_mask"]`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from classic.runlog import plot_curves
from classic.tabular.dp import check_gamma
from classic.tabular.td import legal_actions

Features = Callable[[np.ndarray, int], np.ndarray]  # (observation, action) -> (n_features,)


@dataclass
class LinearResult:
    w: np.ndarray  # (n_features,) weights
    episode_returns: np.ndarray  # (episodes,)
    episode_lengths: np.ndarray  # (episodes,)


def _choose(
    w: np.ndarray,
    features: Features,
    obs: np.ndarray,
    legal: np.ndarray,
    epsilon: float,
    rng: np.random.Generator,
) -> tuple[int, np.ndarray]:
    """Epsilon-greedy action among `legal` (ties at random) and its feature vector x(s, a)."""
    if rng.random() < epsilon:
        a = int(legal[rng.integers(len(legal))])
        return a, features(obs, a)
    x = np.stack([features(obs, int(a)) for a in legal])  # (n_legal, n_features)
    q = x @ w
    best = np.flatnonzero(q == q.max())
    i = int(best[rng.integers(len(best))])
    return int(legal[i]), x[i]


def linear_sarsa(
    env: gym.Env,
    features: Features,
    n_features: int,
    episodes: int,
    alpha: float = 0.05,
    gamma: float = 1.0,
    epsilon: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    curve_path: str | Path | None = None,
) -> LinearResult:
    """Train w online for `episodes` episodes with an epsilon-greedy behaviour policy."""
    check_gamma(gamma)
    if not isinstance(env.action_space, gym.spaces.Discrete):
        raise ValueError(f"linear_sarsa expects a Discrete action space, got {env.action_space}")
    n_actions = int(env.action_space.n)
    rng = np.random.default_rng(seed)
    w = np.zeros(n_features)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    disable = not progress or os.environ.get("RLBOOK_NO_PROGRESS") == "1"
    for episode in tqdm(range(episodes), desc="linear sarsa", unit="ep", disable=disable, leave=False):
        obs, info = env.reset(seed=seed if episode == 0 else None)
        a, x = _choose(w, features, obs, legal_actions(info, n_actions), epsilon, rng)
        done = False
        while not done:
            obs, r, terminated, truncated, info = env.step(a)
            returns[episode] += r
            lengths[episode] += 1
            done = terminated or truncated
            if terminated:
                target = r
            else:
                a, x_next = _choose(w, features, obs, legal_actions(info, n_actions), epsilon, rng)
                target = r + gamma * x_next @ w
            w += alpha * (target - x @ w) * x
            if not terminated:
                x = x_next
    if curve_path is not None:
        rows = [{"episode": i + 1, "episode_return": float(g)} for i, g in enumerate(returns)]
        plot_curves(
            curve_path, rows, "episode", ["episode_return"], "linear SARSA", "episode return", smooth=20
        )
    return LinearResult(w, returns, lengths)


def greedy_linear_action(
    w: np.ndarray, features: Features, obs: np.ndarray, info: dict, n_actions: int
) -> int:
    legal = legal_actions(info, n_actions)
    return int(legal[np.argmax([features(obs, int(a)) @ w for a in legal])])
