"""REINFORCE with baseline: input checks, reproducibility, save/load, the trading env against buy-and-hold, and
seeded CartPole learning tests (the 300k-step acceptance runs are marked `slow`)."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import classic.envs  # noqa: F401
from classic.reinforce import ReinforceConfig, load, train

os.environ["RLBOOK_NO_PROGRESS"] = "1"


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown env_id 'Nope-v9'"):
        ReinforceConfig(env_id="Nope-v9")
    with pytest.raises(ValueError, match="total_timesteps must be positive, got -5"):
        ReinforceConfig(total_timesteps=-5)
    with pytest.raises(ValueError, match="discrete action space.*Box"):
        train(ReinforceConfig(env_id="Pendulum-v1", total_timesteps=10, output_dir=str(tmp_path)))


def test_reproducible_and_load_round_trip(tmp_path):
    a = train(ReinforceConfig(seed=7, total_timesteps=3000, output_dir=str(tmp_path / "a")))
    b = train(ReinforceConfig(seed=7, total_timesteps=3000, output_dir=str(tmp_path / "b")))
    assert a.episode_returns == b.episode_returns and len(a.episode_returns) > 20
    rows = [json.loads(line) for line in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode_return"] for r in rows] == a.episode_returns
    assert [r["global_step"] for r in rows] == a.episode_steps
    assert a.episode_steps[-1] <= a.global_step <= 3000
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    loaded = load(a.run_dir)
    assert np.array_equal(loaded.act(obs), a.agent.act(obs))
    assert torch.equal(loaded.policy(torch.as_tensor(obs)), a.agent.policy(torch.as_tensor(obs)))


def evaluate_trading(act, episodes: int = 200, seed: int = 100_000) -> tuple[float, float, float]:
    """Mean final profit (value - 1) of `act`, of buy-and-hold and of uniform random actions, on held-out
    price series (seeds never used in training)."""
    env = gym.make("rlbook/Trading-v0")
    rng = np.random.default_rng(0)
    profits = {"policy": [], "random": [], "buy_and_hold": []}
    for i in range(episodes):
        for name, policy in (("policy", act), ("random", lambda o: rng.integers(3, size=1))):
            obs, _ = env.reset(seed=seed + i)
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(int(policy(obs[None])[0]))
                done = terminated or truncated
            profits[name].append(info["value"] - 1.0)
        profits["buy_and_hold"].append(info["buy_and_hold"] - 1.0)
    return tuple(float(np.mean(profits[k])) for k in ("policy", "buy_and_hold", "random"))


def test_trading_beats_buy_and_hold(tmp_path):
    """Symmetric bull/bear regimes: buy-and-hold earns ~0 on average, the recent returns reveal the regime."""
    cfg = ReinforceConfig(
        env_id="rlbook/Trading-v0", seed=1, total_timesteps=20_000, output_dir=str(tmp_path)
    )
    result = train(cfg)
    learned, buy_and_hold, random = evaluate_trading(result.agent.act)
    assert learned > buy_and_hold + 0.05 and learned > random + 0.05, (learned, buy_and_hold, random)


def test_cartpole_short(tmp_path):
    """Default-suite learning test: mean of the last 20 training episodes >= 100 within 20k steps."""
    cfg = ReinforceConfig(seed=1, total_timesteps=20_000, stop_at_return=100, output_dir=str(tmp_path))
    result = train(cfg)
    assert np.mean(result.episode_returns[-20:]) >= 100


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_cartpole_solved_within_300k(seed, tmp_path):
    cfg = ReinforceConfig(seed=seed, total_timesteps=300_000, stop_at_return=475, output_dir=str(tmp_path))
    result = train(cfg)
    assert np.mean(result.episode_returns[-20:]) >= 475
