"""Dynamic programming against reference numbers (REFERENCES.md) and BFS on generated mazes."""

import gymnasium as gym
import numpy as np
import pytest

import classic.envs  # noqa: F401  (registers rlbook/Maze-v0)
from classic import policy_iteration, value_iteration
from classic.envs.maze import bfs_distance
from classic.tabular.dp import policy_evaluation, tabular_model


def test_frozenlake_reference_value_and_policy_iteration_agree():
    env = gym.make("FrozenLake-v1", is_slippery=True)
    V, policy = value_iteration(env, gamma=0.99)
    assert V[0] == pytest.approx(0.542025932, abs=1e-6)
    V_pi, policy_pi = policy_iteration(env, gamma=0.99)
    np.testing.assert_allclose(V_pi, V, atol=1e-6)
    np.testing.assert_array_equal(policy_pi, policy)
    assert V[[5, 7, 11, 12, 15]].tolist() == [0.0] * 5  # holes and goal are terminal: value 0


def test_cliffwalking_and_taxi_optimal_values():
    V, policy = value_iteration(gym.make("CliffWalking-v1"), gamma=1.0)
    assert V[36] == -13.0  # start state: 13 steps along the cliff edge
    V_taxi, _ = value_iteration(gym.make("Taxi-v4"), gamma=1.0)
    # taxi at R (0,0) with the passenger there, destination G (0,4): pickup (-1), 8 moves around the wall
    # between columns 1 and 2 (down 2, right 4, up 2; -1 each), dropoff (+20): 20 - 9 = 11
    s = gym.make("Taxi-v4").unwrapped.encode(0, 0, 0, 1)
    assert V_taxi[s] == 11.0


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CliffWalking-v1", "Taxi-v4"])
def test_gamma_one_policy_iteration_matches_value_iteration(env_id):
    env = gym.make(env_id)
    V, _ = value_iteration(env, gamma=1.0)
    V_pi, _ = policy_iteration(env, gamma=1.0)  # starts from a proper policy, so evaluation is finite
    np.testing.assert_allclose(V_pi, V, atol=1e-6)


def test_gamma_one_terminates_thanks_to_terminal_masking():
    # FrozenLake's terminal states self-loop and Taxi's delivered states have non-terminal moves; without the
    # terminated mask these would diverge at gamma=1.
    V, _ = value_iteration(gym.make("FrozenLake-v1"), gamma=1.0, tol=1e-10)
    assert np.isfinite(V).all() and 0.82 < V[0] <= 1.0
    V_taxi, _ = value_iteration(gym.make("Taxi-v4"), gamma=1.0)
    assert np.isfinite(V_taxi).all() and V_taxi.max() == 20.0


@pytest.mark.parametrize("size,maze_seed,loops", [(4, 0, 0.0), (6, 1, 0.1), (8, 2, 0.2), (10, 3, 0.3)])
def test_maze_greedy_path_is_bfs_shortest(size, maze_seed, loops):
    env = gym.make("rlbook/Maze-v0", size=size, maze_seed=maze_seed, loop_fraction=loops)
    maze = env.unwrapped
    shortest = bfs_distance(maze.wall, maze.start, maze.goal)
    for gamma in (0.99, 1.0):
        V, policy = value_iteration(env, gamma=gamma)
        s, _ = env.reset(seed=0)
        steps, terminated = 0, False
        while not terminated:
            s, r, terminated, truncated, _ = env.step(policy[s])
            steps += 1
            assert not truncated
        assert steps == shortest
    assert V[maze.index[maze.start]] == -shortest  # gamma=1: value is minus the path length


def test_maze_generation_is_seeded_and_renders():
    a = gym.make("rlbook/Maze-v0", size=5, maze_seed=7, render_mode="ansi")
    b = gym.make("rlbook/Maze-v0", size=5, maze_seed=7, render_mode="rgb_array")
    assert (a.unwrapped.wall == b.unwrapped.wall).all()
    assert not (a.unwrapped.wall == gym.make("rlbook/Maze-v0", size=5, maze_seed=8).unwrapped.wall).all()
    a.reset(seed=0)
    b.reset(seed=0)
    text = a.render()
    assert text.count("\n") == 11 and "A" in text and "G" in text
    assert b.render().shape == (11 * 8, 11 * 8, 3)


def test_bad_inputs_raise_value_error_saying_what_was_expected():
    with pytest.raises(ValueError, match="tabular model.*env.unwrapped.P"):
        value_iteration(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        value_iteration(gym.make("FrozenLake-v1"), gamma=1.5)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        policy_iteration(gym.make("FrozenLake-v1"), gamma=-0.1)
    # gamma=1 policy evaluation of a policy that never terminates says so (CliffWalking: always left)
    model = tabular_model(gym.make("CliffWalking-v1"))
    with pytest.raises(ValueError, match="terminates from every state"):
        policy_evaluation(model, np.zeros(48, dtype=np.int64), gamma=1.0)


def test_demo_solves_and_prints_the_maze():
    from classic.tabular.__main__ import main

    report = main(
        ["--size", "6", "--maze_seed", "1", "--loop_fraction", "0.2", "--method", "policy_iteration"]
    )
    assert "greedy path 24 steps (BFS shortest 24), V(start) = -24.000" in report
    assert report.count("#") > 50
    with pytest.raises(ValueError, match="valid keys are"):
        main(["--sise", "6"])
