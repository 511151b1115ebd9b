"""The RL textbook as runnable code: tabular methods, DQN, REINFORCE, A2C and PPO on gymnasium."""

from classic import functional
from classic.tabular import (
    TDResult,
    expected_sarsa,
    greedy_returns_by_start,
    greedy_rollouts,
    linear_sarsa,
    policy_iteration,
    q_learning,
    sarsa,
    td_control,
    value_iteration,
)

__all__ = [
    "TDResult",
    "expected_sarsa",
    "functional",
    "greedy_returns_by_start",
    "greedy_rollouts",
    "linear_sarsa",
    "policy_iteration",
    "q_learning",
    "sarsa",
    "td_control",
    "value_iteration",
]
