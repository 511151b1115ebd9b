"""One-step TD control with an epsilon-greedy behaviour policy (Sutton & Barto, Chapter 6).

All three methods share one loop; they differ only in the target of the update
Q(S,A) <- Q(S,A) + alpha [target - Q(S,A)]:

- SARSA (Section 6.4):          R + gamma Q(S', A'),          A' the action actually taken next (on-policy)
- Q-learning (Section 6.5):     R + gamma max_a Q(S', a)      (off-policy, eq. 6.8)
- Expected SARSA (Section 6.6): R + gamma sum_a pi(a|S') Q(S', a), pi the epsilon-greedy policy

A terminated transition has target R (no bootstrap); a truncated one (time limit) still bootstraps, since the
state itself was not terminal. If the env reports `info["action_mask"]` (e.g. checkers), actions are chosen and
maximised over the legal ones only, A(s) in the book's notation.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from classic.runlog import plot_curves
from classic.tabular.dp import check_gamma

Method = Literal["sarsa", "q_learning", "expected_sarsa"]


@dataclass
class TDResult:
    Q: np.ndarray  # (n_states, n_actions) action-value table
    episode_returns: np.ndarray  # (episodes,) undiscounted return of each training episode
    episode_lengths: np.ndarray  # (episodes,) steps in each training episode

    @property
    def policy(self) -> np.ndarray:
        """The greedy policy, (n_states,) int."""
        return np.argmax(self.Q, axis=1)


def check_tabular_spaces(env: gym.Env) -> tuple[int, int]:
    if not isinstance(env.observation_space, gym.spaces.Discrete) or not isinstance(
        env.action_space, gym.spaces.Discrete
    ):
        raise ValueError(
            "tabular TD control expects Discrete observation and action spaces (a state index to look up in the "
            f"Q table); got observation_space={env.observation_space}, action_space={env.action_space}. "
            "Use a discrete observation mode or wrapper (e.g. rlbook/Snake-v0 with obs_mode='compact')."
        )
    return int(env.observation_space.n), int(env.action_space.n)


def legal_actions(info: dict, n_actions: int) -> np.ndarray:
    mask = info.get("action_mask")
    return _all_actions(n_actions) if mask is None else np.flatnonzero(mask)


@functools.cache
def _all_actions(n_actions: int) -> np.ndarray:
    return np.arange(n_actions)


def epsilon_greedy(q_s: np.ndarray, legal: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random legal action, else a greedy one (ties broken at random, so
    an all-zero initial Q does not always pick action 0)."""
    if rng.random() < epsilon:
        return int(legal[rng.integers(len(legal))])
    q_legal = q_s if len(legal) == len(q_s) else q_s[legal]  # no copy in the common all-legal case
    best = np.flatnonzero(q_legal == q_legal.max())
    return int(legal[best[0] if len(best) == 1 else best[rng.integers(len(best))]])


def expected_value(q_s: np.ndarray, legal: np.ndarray, epsilon: float) -> float:
    """sum_a pi(a|s) q(s,a) for the epsilon-greedy pi above (greedy mass shared among tied maxima)."""
    q_legal = q_s[legal]
    greedy = q_legal == q_legal.max()
    probs = epsilon / len(legal) + (1.0 - epsilon) * greedy / greedy.sum()
    return float(probs @ q_legal)


def td_control(
    env: gym.Env,
    method: Method,
    episodes: int,
    alpha: float = 0.5,
    gamma: float = 1.0,
    epsilon: float = 0.1,
    seed: int = 0,
    q_init: float = 0.0,
    progress: bool = True,
    curve_path: str | Path | None = None,
) -> TDResult:
    """Run `episodes` episodes of online TD control; defaults are S&B Example 6.6's (alpha 0.5, eps 0.1, gamma 1)."""
    n_states, n_actions = check_tabular_spaces(env)
    check_gamma(gamma)
    if not 0.0 <= epsilon <= 1.0 or not 0.0 < alpha <= 1.0:
        raise ValueError(f"need 0 <= epsilon <= 1 and 0 < alpha <= 1, got epsilon={epsilon}, alpha={alpha}")
    if method not in ("sarsa", "q_learning", "expected_sarsa"):
        raise ValueError(f"method must be 'sarsa', 'q_learning' or 'expected_sarsa', got {method!r}")
    rng = np.random.default_rng(seed)
    Q = np.full((n_states, n_actions), q_init, dtype=np.float64)
    returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
    disable = not progress or os.environ.get("RLBOOK_NO_PROGRESS") == "1"
    bar = tqdm(range(episodes), desc=method, unit="ep", disable=disable, leave=False)
    for episode in bar:
        s, info = env.reset(seed=seed if episode == 0 else None)  # seed once: episodes differ but reproduce
        a = epsilon_greedy(Q[s], legal_actions(info, n_actions), epsilon, rng)
        done = False
        while not done:
            s_next, r, terminated, truncated, info = env.step(a)
            returns[episode] += r
            lengths[episode] += 1
            done = terminated or truncated
            legal_next = legal_actions(info, n_actions)
            a_next = epsilon_greedy(Q[s_next], legal_next, epsilon, rng) if not terminated else -1
            if terminated:
                target = r
            elif method == "sarsa":
                target = r + gamma * Q[s_next, a_next]
            elif method == "q_learning":
                target = r + gamma * Q[s_next, legal_next].max()
            else:
                target = r + gamma * expected_value(Q[s_next], legal_next, epsilon)
            Q[s, a] += alpha * (target - Q[s, a])
            s, a = s_next, a_next
        if episode % 50 == 0:
            bar.set_postfix(ret50=f"{returns[max(0, episode - 49) : episode + 1].mean():.1f}")
    if curve_path is not None:
        rows = [{"episode": i + 1, "episode_return": float(g)} for i, g in enumerate(returns)]
        plot_curves(curve_path, rows, "episode", ["episode_return"], method, "episode return", smooth=20)
    return TDResult(Q, returns, lengths)


def q_learning(env: gym.Env, episodes: int, **kwargs) -> TDResult:
    """Q-learning, S&B Section 6.5; keyword arguments as `td_control`."""
    return td_control(env, "q_learning", episodes, **kwargs)


def sarsa(env: gym.Env, episodes: int, **kwargs) -> TDResult:
    """SARSA, S&B Section 6.4; keyword arguments as `td_control`."""
    return td_control(env, "sarsa", episodes, **kwargs)


def expected_sarsa(env: gym.Env, episodes: int, **kwargs) -> TDResult:
    """Expected SARSA, S&B Section 6.6; keyword arguments as `td_control`."""
    return td_control(env, "expected_sarsa", episodes, **kwargs)


def greedy_rollouts(env: gym.Env, Q: np.ndarray, episodes: int, seed: int = 0) -> np.ndarray:
    """Undiscounted returns of `episodes` greedy episodes (reset seeds seed, seed+1, ...); legal actions only."""
    returns = np.zeros(episodes)
    for i in range(episodes):
        s, info = env.reset(seed=seed + i)
        done = False
        while not done:
            legal = legal_actions(info, Q.shape[1])
            s, r, terminated, truncated, info = env.step(int(legal[np.argmax(Q[s, legal])]))
            returns[i] += r
            done = terminated or truncated
    return returns


def greedy_returns_by_start(
    env: gym.Env, Q: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One greedy episode from *every* start state of a toy-text env (Taxi, CliffWalking, FrozenLake): the
    states with p > 0 in `env.unwrapped.initial_state_distrib`, each set via `env.unwrapped.s` after a reset.
    Returns (start states, their probabilities, undiscounted returns, terminated), so the expected greedy return
    over the initial distribution is `probs @ returns`; `terminated` is False where the episode hit the time
    limit (the greedy policy loops). Exact for a deterministic env; for a stochastic one, one sample per state.
    Seeded resets instead draw a sample of start states with repeats and gaps, which can hide a bad policy."""
    unwrapped = env.unwrapped
    probs = np.asarray(getattr(unwrapped, "initial_state_distrib", None), dtype=np.float64)
    if probs.ndim != 1 or not hasattr(unwrapped, "s"):
        raise ValueError("greedy_returns_by_start expects a toy-text env (initial_state_distrib and s)")
    starts = np.flatnonzero(probs)
    returns, terminated = np.zeros(len(starts)), np.zeros(len(starts), dtype=bool)
    for i, start in enumerate(starts):
        env.reset(seed=0)  # resets the time limit; the state is then set by hand
        unwrapped.s = s = int(start)
        # the reset's info["action_mask"] belongs to the state it drew, not to this one (Taxi computes masks)
        info = {"action_mask": unwrapped.action_mask(s)} if hasattr(unwrapped, "action_mask") else {}
        done = False
        while not done:
            legal = legal_actions(info, Q.shape[1])
            s, r, terminated[i], truncated, info = env.step(int(legal[np.argmax(Q[s, legal])]))
            returns[i] += r
            done = terminated[i] or truncated
    return starts, probs[starts], returns, terminated
