"""Dynamic programming on a known tabular model (Sutton & Barto, Chapter 4).

The model is gymnasium's toy-text format, `env.unwrapped.P[s][a] = [(prob, next_state, reward, terminated), ...]`
(FrozenLake, CliffWalking, Taxi and `rlbook/Maze-v0` all expose it).

Terminal handling: a transition flagged `terminated` does not bootstrap, i.e. the backup is
`p * (r + gamma * (1 - terminated) * V(s'))`. Toy-text models give terminal states self-loops (FrozenLake's
holes) or even non-terminating moves (Taxi's "delivered" states), so without the mask gamma=1 value iteration
would add up rewards around those loops forever instead of stopping.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np


@dataclass
class TabularModel:
    """P flattened into arrays of transitions, one entry per (s, a, outcome), so that a full sweep is a few
    numpy calls. `sa` is the flat index s * n_actions + a of each transition."""

    n_states: int
    n_actions: int
    sa: np.ndarray  # (n_transitions,) int
    prob: np.ndarray  # (n_transitions,) float
    next_state: np.ndarray  # (n_transitions,) int
    reward: np.ndarray  # (n_transitions,) float
    terminated: np.ndarray  # (n_transitions,) bool


def check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")


def tabular_model(env: gym.Env) -> TabularModel:
    """Read `env.unwrapped.P` into a TabularModel, or raise a ValueError saying what was expected."""
    unwrapped = getattr(env, "unwrapped", env)
    P = getattr(unwrapped, "P", None)
    expected = (
        "expected an env with a tabular model: Discrete observation and action spaces and "
        "env.unwrapped.P[s][a] = [(prob, next_state, reward, terminated), ...] (gymnasium toy-text format)"
    )
    if not isinstance(env.observation_space, gym.spaces.Discrete) or not isinstance(
        env.action_space, gym.spaces.Discrete
    ):
        raise ValueError(
            f"{expected}; got observation_space={env.observation_space}, action_space={env.action_space}"
        )
    if P is None:
        raise ValueError(f"{expected}; {type(unwrapped).__name__} has no attribute P")
    n_states, n_actions = int(env.observation_space.n), int(env.action_space.n)
    rows = []
    for s in range(n_states):
        for a in range(n_actions):
            try:
                outcomes = P[s][a]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{expected}; P[{s}][{a}] is missing") from None
            for outcome in outcomes:
                if len(outcome) != 4:
                    raise ValueError(f"{expected}; P[{s}][{a}] has entry {outcome!r}")
                prob, s_next, r, term = outcome
                rows.append((s * n_actions + a, prob, s_next, r, term))
    sa, prob, next_state, reward, terminated = (np.array(col) for col in zip(*rows))
    totals = np.bincount(sa, weights=prob, minlength=n_states * n_actions)
    if not np.allclose(totals, 1.0, atol=1e-6):
        bad = int(np.flatnonzero(~np.isclose(totals, 1.0, atol=1e-6))[0])
        raise ValueError(
            f"{expected}; probabilities of P[{bad // n_actions}][{bad % n_actions}] do not sum to 1"
        )
    return TabularModel(
        n_states,
        n_actions,
        sa.astype(np.int64),
        prob.astype(np.float64),
        next_state.astype(np.int64),
        reward.astype(np.float64),
        terminated.astype(bool),
    )


def q_from_v(model: TabularModel, V: np.ndarray, gamma: float) -> np.ndarray:
    """One-step lookahead, S&B eq. (4.6): q(s,a) = sum_{s',r} p(s',r|s,a) [r + gamma v(s')], with no bootstrap
    past a terminal transition. Returns (n_states, n_actions)."""
    backup = model.prob * (model.reward + gamma * np.where(model.terminated, 0.0, V[model.next_state]))
    q = np.bincount(model.sa, weights=backup, minlength=model.n_states * model.n_actions)
    return q.reshape(model.n_states, model.n_actions)


def value_iteration(
    env: gym.Env, gamma: float = 0.99, tol: float = 1e-10, max_iterations: int = 1_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Value iteration, S&B Section 4.4: V(s) <- max_a sum p(s',r|s,a)[r + gamma V(s')] until the largest change
    (Delta) is below `tol`; then the greedy policy. Sweeps are synchronous (all states from the previous V).

    Returns V (n_states,) float and policy (n_states,) int (ties broken to the lowest action)."""
    check_gamma(gamma)
    model = tabular_model(env)
    V = np.zeros(model.n_states)
    for _ in range(max_iterations):
        V_new = q_from_v(model, V, gamma).max(axis=1)
        delta = np.max(np.abs(V_new - V))
        V = V_new
        if delta < tol:
            break
    else:
        raise RuntimeError(
            f"value iteration did not converge in {max_iterations} sweeps (last Delta {delta:.3g}); with "
            "gamma=1 every optimal policy must reach a terminal transition"
        )
    policy = np.argmax(q_from_v(model, V, gamma), axis=1)
    return V, policy


def policy_evaluation(model: TabularModel, policy: np.ndarray, gamma: float) -> np.ndarray:
    """Exact v_pi from the Bellman equation (S&B eq. 4.4) as a linear system (I - gamma P_pi) v = r_pi."""
    s_all = model.sa // model.n_actions
    chosen = model.sa == s_all * model.n_actions + policy[s_all]  # transitions of the action pi(s)
    s = s_all[chosen]
    P_pi = np.zeros((model.n_states, model.n_states))
    np.add.at(P_pi, (s, model.next_state[chosen]), model.prob[chosen] * ~model.terminated[chosen])
    r_pi = np.bincount(s, weights=model.prob[chosen] * model.reward[chosen], minlength=model.n_states)
    if gamma == 1.0:
        # Undiscounted values are finite only if pi reaches a terminal transition from every state (a "proper"
        # policy, S&B Section 3.4); otherwise I - P_pi is singular. States that can reach termination:
        reaches = P_pi.sum(axis=1) < 1.0 - 1e-12
        while True:
            grown = reaches | (P_pi[:, reaches].sum(axis=1) > 0)
            if (grown == reaches).all():
                break
            reaches = grown
        if not reaches.all():
            raise ValueError(
                f"policy evaluation with gamma=1 needs a policy that terminates from every state; from state "
                f"{int(np.flatnonzero(~reaches)[0])} it never does (use gamma < 1, or value_iteration)"
            )
    A = np.eye(model.n_states) - gamma * P_pi
    return np.linalg.solve(A, r_pi)


def proper_policy(model: TabularModel) -> np.ndarray:
    """A policy that reaches a terminal transition from every state with probability 1 (needed to start policy
    iteration at gamma=1): grow the set of states known to reach termination backwards, each new state taking an
    action with some probability of entering the set. Raises a ValueError if some state can never terminate."""
    s_all, a_all = model.sa // model.n_actions, model.sa % model.n_actions
    policy = np.full(model.n_states, -1, dtype=np.int64)
    reaches = np.zeros(model.n_states, dtype=bool)
    while True:
        into = (model.prob > 0) & (model.terminated | reaches[model.next_state]) & ~reaches[s_all]
        if not into.any():
            break
        new_s, first = np.unique(s_all[into], return_index=True)
        policy[new_s], reaches[new_s] = a_all[into][first], True
    if not reaches.all():
        raise ValueError(
            f"with gamma=1 every state must be able to reach a terminal transition; state "
            f"{int(np.flatnonzero(~reaches)[0])} cannot (use gamma < 1)"
        )
    return policy


def policy_iteration(
    env: gym.Env, gamma: float = 0.99, tol: float = 1e-10, max_iterations: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Policy iteration, S&B Section 4.3: evaluate pi exactly, make it greedy, stop when it is stable.

    At gamma=1 it starts from a policy that terminates everywhere (`proper_policy`); strict improvements keep
    it terminating. The policy only switches to an action that is better by more than `tol`, so ties cannot make it cycle
    forever between equally good policies (the bug of the book's pseudo-code, S&B Exercise 4.4)."""
    check_gamma(gamma)
    model = tabular_model(env)
    # any start works for gamma < 1; undiscounted values are finite only for policies that terminate
    policy = proper_policy(model) if gamma == 1.0 else np.zeros(model.n_states, dtype=np.int64)
    for _ in range(max_iterations):
        V = policy_evaluation(model, policy, gamma)  # 1. policy evaluation
        q = q_from_v(model, V, gamma)  # 2. policy improvement
        best = np.argmax(q, axis=1)
        improves = q[np.arange(model.n_states), best] > q[np.arange(model.n_states), policy] + tol
        if not improves.any():
            return V, policy
        policy = np.where(improves, best, policy)
    raise RuntimeError(f"policy iteration did not become stable in {max_iterations} iterations")
