"""Tabular methods: dynamic programming (S&B Chapter 4) and one-step TD control (S&B Chapter 6)."""

from classic.tabular.dp import policy_iteration, value_iteration
from classic.tabular.linear import LinearResult, linear_sarsa
from classic.tabular.td import (
    TDResult,
    expected_sarsa,
    greedy_returns_by_start,
    greedy_rollouts,
    q_learning,
    sarsa,
    td_control,
)

__all__ = [
    "LinearResult",
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
]
