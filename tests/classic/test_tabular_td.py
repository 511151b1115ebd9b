"""TD control: reference numbers of Sutton & Barto Example 6.6 and optimality on CliffWalking and Taxi."""

import gymnasium as gym
import numpy as np
import pytest

from classic import (
    expected_sarsa,
    greedy_returns_by_start,
    greedy_rollouts,
    q_learning,
    sarsa,
    value_iteration,
)
from classic.tabular.td import expected_value


def test_expected_value_of_epsilon_greedy_by_hand():
    q = np.array([1.0, 3.0, 3.0, 0.0])
    # eps/4 on each action, the remaining 1 - eps shared by the two tied maxima
    assert expected_value(q, np.arange(4), 0.2) == pytest.approx(0.05 * 7 + 0.4 * 3 + 0.4 * 3)
    assert expected_value(q, np.array([0, 3]), 0.0) == 1.0  # legal actions only


def test_cliffwalking_example_6_6_sarsa_safe_q_learning_optimal(tmp_path):
    env = gym.make("CliffWalking-v1")
    runs = 5
    online = {}
    for name, algo in (("sarsa", sarsa), ("q_learning", q_learning)):
        results = [
            algo(env, 500, alpha=0.5, epsilon=0.1, gamma=1.0, seed=k, progress=False) for k in range(runs)
        ]
        online[name] = np.mean([r.episode_returns[100:500].mean() for r in results])  # episodes 101-500
        if name == "q_learning":
            # greedy (epsilon 0) policy of every run walks the cliff edge: the optimal return -13
            assert [greedy_rollouts(env, r.Q, 1)[0] for r in results] == [-13.0] * runs
    # S&B Figure 6.4: SARSA about -25, Q-learning about -50 online; measured -26.7 and -48.7 with these seeds
    assert -32 < online["sarsa"] < -22, online
    assert -56 < online["q_learning"] < -44, online
    assert online["sarsa"] > online["q_learning"] + 15
    curve = tmp_path / "curve.png"
    expected_sarsa(env, 50, seed=0, progress=False, curve_path=curve)
    assert curve.stat().st_size > 1000


def test_taxi_q_learning_reaches_the_exact_optimum_from_every_start_state():
    """The optimum is V* averaged over Taxi's initial-state distribution (all 300 start states), and the greedy
    policy is scored on the same distribution exactly: one rollout per start state (Taxi is deterministic)."""
    env = gym.make("Taxi-v4")
    V, _ = value_iteration(env, gamma=1.0)
    isd = env.unwrapped.initial_state_distrib
    optimal = float(isd @ V)
    assert optimal == pytest.approx(7.93, abs=1e-9)
    # Deterministic transitions: alpha 1 is exact. Epsilon 0.3 explores enough to fix the rarely visited
    # states; measured: every start state optimal for seeds 0-4 in 5000 episodes (~2 s).
    result = q_learning(env, 5000, alpha=1.0, gamma=0.99, epsilon=0.3, seed=0, progress=False)
    starts, probs, returns, terminated = greedy_returns_by_start(env, result.Q)
    assert len(starts) == 300 and probs.sum() == pytest.approx(1.0)
    assert terminated.all()  # no start state where the greedy policy loops until the time limit
    assert abs(probs @ returns - optimal) < 0.05, probs @ returns
    # the mean alone would let a few suboptimal start states through (see below): each one must be optimal
    assert [int(s) for s in starts[returns != V[starts]]] == []
    # the check sees a wrong result: the old test's budget (1500 episodes, alpha 0.5, epsilon 0.1) is 7.897 on
    # this distribution, one step or more too long from 5 start states (it scored 8.237 on the old sample)
    weak = q_learning(env, 1500, alpha=0.5, gamma=0.99, epsilon=0.1, seed=0, progress=False)
    _, _, weak_returns, _ = greedy_returns_by_start(env, weak.Q)
    assert (weak_returns < V[starts]).sum() >= 3


def test_seeded_runs_reproduce():
    env = gym.make("CliffWalking-v1")
    a = expected_sarsa(env, 30, seed=3, progress=False)
    b = expected_sarsa(env, 30, seed=3, progress=False)
    np.testing.assert_array_equal(a.Q, b.Q)
    np.testing.assert_array_equal(a.episode_returns, b.episode_returns)


def test_continuous_observations_are_rejected():
    with pytest.raises(ValueError, match="expects Discrete observation and action spaces"):
        q_learning(gym.make("CartPole-v1"), 1)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        sarsa(gym.make("CliffWalking-v1"), 1, gamma=2.0)
