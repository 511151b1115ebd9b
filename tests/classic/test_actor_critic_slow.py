"""Acceptance runs of issue #4 (minutes each on one core): python -m pytest -m slow tests/classic

CartPole-v1 "solved" = mean of the last 20 training episodes >= 475 (classic.actor_critic.first_solved_step)."""

import statistics
from pathlib import Path

import pytest
import torch

from classic import a2c, ppo
from classic.cli import parse_config

CONFIGS = Path(ppo.__file__).parent / "configs"
SEEDS = [1, 2, 3, 4, 5]

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("RLBOOK_NO_PROGRESS", "1")
    torch.set_num_threads(1)


def test_ppo_solves_cartpole_within_30k_steps_median(tmp_path):
    steps = []
    for seed in SEEDS:
        argv = ["--config", str(CONFIGS / "ppo_cartpole.yaml"), "--seed", str(seed)]
        argv += ["--output_dir", str(tmp_path / f"{seed}"), "--stop_at_return", "475"]
        steps.append(ppo.train(parse_config(ppo.PPOConfig, argv)).solved_step)
    print("PPO CartPole steps to solve per seed:", steps)
    assert all(s is not None for s in steps)
    # Issue #4: <= 30,000. ppo_cartpole.yaml on seeds 1-5: 27,608 / 16,288 / 17,440 / 15,824 / 14,328, median
    # 16,288; seeds 1-30 all solve, median 18,032, slowest 29,368. Float-level changes (another CPU's kernels)
    # move single seeds by thousands of steps: the RL-Zoo defaults gave a median of 24,040 on one machine and
    # 38,160 / 34,768 / 41,152 on seeds 1-3 of another.
    assert statistics.median(steps) <= 30_000


def test_a2c_solves_cartpole_5_of_5_within_100k_steps(tmp_path):
    steps = []
    for seed in SEEDS:
        argv = [
            "--config",
            str(CONFIGS / "a2c_cartpole.yaml"),
            "--seed",
            str(seed),
            "--output_dir",
            str(tmp_path / f"{seed}"),
        ]
        cfg = parse_config(a2c.A2CConfig, argv + ["--total_timesteps", "100000", "--stop_at_return", "475"])
        steps.append(a2c.train(cfg).solved_step)
    print("A2C CartPole steps to solve per seed:", steps)
    assert all(s is not None and s <= 100_000 for s in steps)


def test_ppo_pendulum_reaches_minus_250_within_200k_steps(tmp_path):
    argv = ["--config", str(CONFIGS / "ppo_pendulum.yaml"), "--seed", "1", "--output_dir", str(tmp_path)]
    cfg = parse_config(ppo.PPOConfig, argv + ["--total_timesteps", "200000", "--stop_at_return", "-250"])
    result = ppo.train(cfg)
    print("PPO Pendulum: mean of last 20 training episodes >= -250 at step", result.solved_step)
    assert result.solved_step is not None and result.solved_step <= 200_000
