"""DQN: hand-computed targets, the replay/target/epsilon pieces, input checks, reproducibility, save/load, and
seeded learning tests (CartPole, Catch from pixels). Slow acceptance runs are marked `slow`."""

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

import classic.envs  # noqa: F401
from classic.common import save_model
from classic.dqn import (
    DQNConfig,
    QNetwork,
    ReplayBuffer,
    linear_schedule,
    load,
    main,
    td_targets,
    train,
    update_target,
)

os.environ["RLBOOK_NO_PROGRESS"] = "1"


def test_td_targets_dqn_and_double_dqn_by_hand():
    rewards = torch.tensor([1.0, 0.5])
    terminated = torch.tensor([0.0, 1.0])
    next_q_target = torch.tensor([[2.0, 3.0], [4.0, -1.0]])
    next_q_online = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
    # DQN: y = r + gamma * max_a Q_hat(s', a); the terminated row keeps only r
    assert td_targets(rewards, terminated, next_q_target, 0.9).tolist() == pytest.approx(
        [1.0 + 0.9 * 3.0, 0.5]
    )
    # double DQN: the online net picks a* = 0 in row 0, the target net evaluates it: 1 + 0.9 * 2
    double = td_targets(rewards, terminated, next_q_target, 0.9, next_q_online)
    assert double.tolist() == pytest.approx([1.0 + 0.9 * 2.0, 0.5])


def test_linear_schedule_and_target_update():
    assert [linear_schedule(1.0, 0.1, 10, t) for t in (0, 5, 10, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    w_online, w_target = online.weight.detach().clone(), target.weight.detach().clone()
    target_params, online_params = list(target.parameters()), list(online.parameters())
    update_target(target_params, online_params, 0.25)  # Polyak: 0.25 * theta + 0.75 * theta^-
    assert torch.allclose(target.weight, 0.25 * w_online + 0.75 * w_target)
    update_target(target_params, online_params, 1.0)  # hard copy
    assert torch.equal(target.weight, online.weight)


def test_replay_buffer_ring_and_sample():
    space = gym.spaces.Box(0, 255, (1, 2, 2), np.uint8)
    rb = ReplayBuffer(3, space, seed=0)
    for i in range(5):  # overwrites the two oldest
        rb.add(np.full((1, 2, 2), i), i, float(i), np.full((1, 2, 2), i + 1), i == 4)
    assert rb.size == 3 and sorted(rb.actions.tolist()) == [2, 3, 4]
    b = rb.sample(16)
    assert b["obs"].shape == (16, 1, 2, 2) and b["obs"].dtype == torch.uint8
    # every sampled transition is consistent: s' = s + 1, r = a, terminated only for a = 4
    assert torch.equal(b["next_obs"].long(), b["obs"].long() + 1)
    assert torch.equal(b["rewards"], b["actions"].float())
    assert torch.equal(b["terminated"], (b["actions"] == 4).float())


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown env_id 'NoSuchEnv-v0'"):
        DQNConfig(env_id="NoSuchEnv-v0")
    with pytest.raises(ValueError, match="total_timesteps must be positive, got 0"):
        DQNConfig(total_timesteps=0)
    with pytest.raises(ValueError, match="DQN needs a discrete action space.*Box"):
        train(DQNConfig(env_id="Pendulum-v1", total_timesteps=10, output_dir=str(tmp_path)))


class _ConstantRewardEnv(gym.Env):
    """Reward 1 every step, one observation, one action; TimeLimit 8 truncates (SB3's GAE-test env)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 1.0, False, False, {}


def test_bootstraps_through_truncation(tmp_path):
    """gamma 0.98: Q(s) -> 1 / (1 - gamma) = 50 when the time limit is bootstrapped (REFERENCES.md); had
    truncation been treated as termination the fixed point would be 1 / (1 - 0.98 * 7/8) = 7."""
    gym.register("rlbook-test/ConstantReward-v0", entry_point=_ConstantRewardEnv, max_episode_steps=8)
    cfg = DQNConfig(
        env_id="rlbook-test/ConstantReward-v0",
        total_timesteps=800,
        learning_starts=32,
        train_frequency=1,
        gradient_steps=2,
        target_network_frequency=2,
        tau=1.0,
        learning_rate=0.3,
        gamma=0.98,
        hidden_sizes=[],  # Q(s) is one linear layer: with the constant observation, just its bias
        buffer_size=1000,
        batch_size=32,
        output_dir=str(tmp_path),
    )
    result = train(cfg)
    q = result.agent(torch.zeros(1, 1)).item()
    assert abs(q - 50.0) < 1.0, q


def test_reproducible_and_load_round_trip(tmp_path):
    kwargs = dict(total_timesteps=1000, learning_starts=200, train_frequency=50, gradient_steps=5)
    a = train(DQNConfig(seed=3, output_dir=str(tmp_path / "a"), **kwargs))
    b = train(DQNConfig(seed=3, output_dir=str(tmp_path / "b"), **kwargs))
    assert a.episode_returns == b.episode_returns and len(a.episode_returns) > 10
    c = train(DQNConfig(seed=4, output_dir=str(tmp_path / "c"), **kwargs))
    assert c.episode_returns != a.episode_returns
    # the run directory
    rows = [json.loads(line) for line in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode_return"] for r in rows] == a.episode_returns
    assert [r["global_step"] for r in rows] == a.episode_steps
    assert (a.run_dir / "curve.png").stat().st_size > 0 and (a.run_dir / "model.pt").is_file()
    # the loaded agent acts exactly like the trained one
    obs = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
    loaded = load(a.run_dir)
    assert np.array_equal(loaded.act(obs), a.agent.act(obs))
    assert torch.equal(loaded(torch.as_tensor(obs)), a.agent(torch.as_tensor(obs)))


def test_run_saved_before_the_rename_loads(tmp_path):
    # a config.json written before run_dir / torch_threads took rlhf's names (output_dir / num_threads)
    saved = {"env_id": "CartPole-v1", "hidden_sizes": [8], "run_dir": None, "torch_threads": 2}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    net = QNetwork(gym.make("CartPole-v1").observation_space, 2, [8])
    save_model(net, tmp_path / "model.pt")
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    assert np.array_equal(load(tmp_path).act(obs), net.act(obs))
    with pytest.raises(ValueError, match="config key 'torch_threads' was renamed to 'num_threads'"):
        main(["--torch-threads", "2"])


def catch_rate(act, episodes: int = 200, seed: int = 10_000) -> float:
    env = gym.make("rlbook/Catch-v0")
    caught = 0
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(act(obs[None])[0]))
            done = terminated or truncated
        caught += reward > 0
    return caught / episodes


CATCH = dict(
    env_id="rlbook/Catch-v0",
    learning_rate=2e-3,
    buffer_size=10_000,
    learning_starts=500,
    train_frequency=2,
    gradient_steps=1,
    target_network_frequency=100,
    tau=1.0,
    double_dqn=False,
    batch_size=32,
    exploration_fraction=0.3,
    end_e=0.05,
    hidden_sizes=[64],
)


def test_catch_from_pixels(tmp_path):
    """4,000 steps (~440 episodes) of DQN with the CNN: the greedy policy catches >= 80% of the balls on
    held-out seeds (measured 0.93), random play catches 11%."""
    result = train(DQNConfig(seed=1, total_timesteps=4000, output_dir=str(tmp_path), **CATCH))
    assert isinstance(result.agent.net[0][0], torch.nn.Conv2d)  # (1, 10, 10) images get the CNN
    assert catch_rate(result.agent.act) >= 0.8


def test_cartpole_short(tmp_path):
    """Default-suite learning test: mean of the last 20 training episodes >= 100 within 12k steps."""
    result = train(DQNConfig(seed=1, total_timesteps=12_000, stop_at_return=100, output_dir=str(tmp_path)))
    assert np.mean(result.episode_returns[-20:]) >= 100


def steps_to_solve(returns: list[float], steps: list[int], threshold: float = 475.0) -> int | None:
    """First global step at which the mean of the last 20 training episodes reaches `threshold`."""
    for i in range(19, len(returns)):
        if np.mean(returns[i - 19 : i + 1]) >= threshold:
            return steps[i]
    return None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_cartpole_solved_within_100k(seed, tmp_path):
    """Measured 2026-12-01 (seeds 1-5): 39,814 / 21,273 / 22,071 / 27,477 / 32,065 steps; seeds 6-10 solve too
    (34,590 / 22,891 / 41,855 / 27,067 / 34,837). DQN on CartPole can collapse: before the fused Adam, on another
    CPU, seed 7 never solved; with exploration_fraction 0.1 seed 5 did not."""
    result = train(
        DQNConfig(seed=seed, total_timesteps=100_000, stop_at_return=475, output_dir=str(tmp_path))
    )
    assert steps_to_solve(result.episode_returns, result.episode_steps) is not None
