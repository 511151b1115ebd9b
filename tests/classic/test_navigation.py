"""rlbook/Navigation-v0: the environment's contract, and A2C learning to reach the goal."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import classic.envs  # noqa: F401
from classic import a2c
from classic.envs.navigation import NavigationEnv


@pytest.mark.parametrize("env_id", ["rlbook/Navigation-v0", "rlbook/NavigationContinuous-v0"])
def test_env_passes_gymnasium_checks_and_renders(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (12,) and env.observation_space.contains(obs)
    img = env.render()
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert env.spec.max_episode_steps == 100


def test_range_sensors_and_collisions():
    env = NavigationEnv()
    env.reset(seed=0)
    env.pos = np.array([0.1, 0.5])
    ranges = env.ranges()  # ray 0 points east (+x), ray 4 west: wall at 0.1, i.e. 1/3 of the 0.3 range
    assert ranges[4] == pytest.approx(0.1 / 0.3)
    env.pos = np.array([0.5 - 0.17 - 0.1, 0.5])  # 0.1 left of the central disc's edge
    assert env.ranges()[0] == pytest.approx(0.1 / 0.3)
    env.pos, env.goal = np.array([0.3, 0.5]), np.array([0.9, 0.5])
    _, reward, terminated, _, _ = env.step(0)  # 0.05 east would enter the disc: blocked
    np.testing.assert_allclose(env.pos, [0.3, 0.5])
    assert reward == pytest.approx(-0.11) and not terminated
    env.pos = np.array([0.85, 0.5])
    _, reward, terminated, _, info = env.step(0)  # reaches the goal
    assert terminated and info["is_success"] and reward == pytest.approx(10 * 0.05 - 0.01 + 1.0)


def success_rate(act, episodes=50):
    env, successes = gym.make("rlbook/Navigation-v0"), 0
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs))
            done = terminated or truncated
        successes += info["is_success"]
    return successes / episodes


def test_a2c_learns_to_reach_the_goal(tmp_path, monkeypatch):
    monkeypatch.setenv("RLBOOK_NO_PROGRESS", "1")
    torch.set_num_threads(1)
    cfg = a2c.A2CConfig(
        env_id="rlbook/Navigation-v0", seed=1, total_timesteps=20_000, output_dir=str(tmp_path)
    )
    agent = a2c.train(cfg).agent
    rng = np.random.default_rng(0)
    random_rate = success_rate(lambda obs: rng.integers(8))
    learned_rate = success_rate(lambda obs: agent.greedy(obs[None])[0])
    assert random_rate <= 0.04
    assert learned_rate >= 0.3
