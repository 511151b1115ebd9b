"""PPO / A2C: bad input, normalisers, truncation bootstrap, clipping acting, save/load, reproducibility, and short
learning runs (longer acceptance runs are marked slow)."""

import dataclasses
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from classic import a2c, actor_critic, dqn, ppo, reinforce
from classic.cli import config_from_saved, parse_config
from classic.common import make_vec_env, save_model
from classic.functional import ppo_policy_loss
from classic.running_norm import RewardScaler, RunningNorm

CONFIGS = Path(ppo.__file__).parent / "configs"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("RLBOOK_NO_PROGRESS", "1")
    torch.set_num_threads(1)


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ppo.PPOConfig, a2c.A2CConfig])
def test_bad_input_names_the_field(cls):
    with pytest.raises(ValueError, match="env_id 'NoSuchEnv-v0'"):
        cls(env_id="NoSuchEnv-v0")
    with pytest.raises(ValueError, match="total_timesteps must be positive"):
        cls(total_timesteps=0)
    with pytest.raises(ValueError, match="num_envs must be positive"):
        parse_config(cls, ["--num_envs", "-1"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_configs_load(path):
    cls = ppo.PPOConfig if path.name.startswith("ppo") else a2c.A2CConfig
    cfg = parse_config(cls, ["--config", str(path)])
    assert cfg.env_id in {"BipedalWalker-v3", "Pendulum-v1", "CartPole-v1", "rlbook/Navigation-v0"}


# a PPO run's config.json as written before the fields took rlhf's names (clip_coef, clip_vloss, ...)
OLD_PPO_CONFIG = {
    "env_id": "CartPole-v1", "seed": 3, "total_timesteps": 1024, "num_envs": 4, "num_steps": 64,
    "minibatch_size": 64, "update_epochs": 2, "learning_rate": 0.001, "anneal_lr": False, "adam_eps": 1e-05,
    "gamma": 0.98, "gae_lambda": 0.8, "clip_coef": 0.15, "anneal_clip": True, "clip_vloss": True,
    "norm_adv": False, "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "target_kl": None,
    "normalize_obs": False, "normalize_reward": False, "hidden_sizes": [8], "init_log_std": 0.0,
    "stop_at_return": None, "torch_threads": 1, "run_dir": "runs/old",
}  # fmt: skip


@pytest.mark.parametrize(
    "old,new", [("clip_coef", "clip_eps"), ("clip_vloss", "value_clip_eps"), ("run_dir", "output_dir")]
)
def test_renamed_key_in_yaml_or_flag_names_the_new_one(tmp_path, old, new):
    moved = f"^config key '{old}' was renamed to '{new}'"
    y = tmp_path / "old.yaml"
    y.write_text(f"{old}: 1\n")
    with pytest.raises(ValueError, match=moved):
        parse_config(ppo.PPOConfig, ["--config", str(y)])
    for flag in (f"--{old}", f"--{old.replace('_', '-')}"):
        with pytest.raises(ValueError, match=moved):
            parse_config(ppo.PPOConfig, [flag, "1"])


@pytest.mark.parametrize("cls", [ppo.PPOConfig, a2c.A2CConfig, dqn.DQNConfig, reinforce.ReinforceConfig])
def test_renames_point_at_real_fields(cls):
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.RENAMED.values()) <= fields and not set(cls.RENAMED) & fields


def test_run_saved_before_the_rename_loads(tmp_path):
    env = gym.make("CartPole-v1")
    agent = actor_critic.Agent(env.observation_space, env.action_space, hidden_sizes=[8])
    save_model(agent, tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps(OLD_PPO_CONFIG))
    obs = np.stack([env.reset(seed=i)[0] for i in range(32)])
    np.testing.assert_array_equal(ppo.load(tmp_path).greedy(obs), agent.greedy(obs))
    # the translated values: clip_vloss=True clipped the value with clip_coef, so that is value_clip_eps
    expected = dict(
        clip_eps=0.15, value_clip_eps=0.15, lr_scheduler="constant", num_ppo_epochs=2, mini_batch_size=64,
        whiten_advantages=False, entropy_coef=0.01, num_threads=1, output_dir="runs/old",
    )  # fmt: skip
    cfg = config_from_saved(ppo.PPOConfig, OLD_PPO_CONFIG)
    assert {k: getattr(cfg, k) for k in expected} == expected
    cfg = config_from_saved(ppo.PPOConfig, {**OLD_PPO_CONFIG, "clip_vloss": False, "anneal_lr": True})
    assert cfg.value_clip_eps is None and cfg.lr_scheduler == "linear"
    old_a2c = {"anneal_lr": True, "ent_coef": 0.01, "norm_adv": True, "torch_threads": 2, "run_dir": "r"}
    expected = dict(
        lr_scheduler="linear", entropy_coef=0.01, whiten_advantages=True, num_threads=2, output_dir="r"
    )
    cfg = config_from_saved(a2c.A2CConfig, old_a2c)
    assert {k: getattr(cfg, k) for k in expected} == expected


# --- normalisers ----------------------------------------------------------------------------------------------


def test_running_norm_matches_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, (50, 3)), rng.normal(-1.0, 0.5, (70, 3))
    norm = RunningNorm(3)
    norm.update(torch.tensor(a)), norm.update(torch.tensor(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(norm.mean.numpy(), both.mean(0), rtol=1e-5)
    np.testing.assert_allclose(norm.var.numpy(), both.var(0), rtol=1e-4)
    y = norm(torch.tensor(both[:2], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(y, (both[:2] - both.mean(0)) / both.std(0), rtol=1e-3)


def test_reward_scaler_divides_by_return_std_and_resets_on_done():
    scaler = RewardScaler(num_envs=2, gamma=0.5)
    scaler(np.array([1.0, 2.0]), np.array([False, True]))
    np.testing.assert_allclose(scaler.returns, [1.0, 0.0])  # env 1 ended: its running return restarts
    out = scaler(np.array([1.0, 1.0]), np.array([False, False]))
    # returns seen: [1, 2] then [1.5, 1]: var of {1, 2, 1.5, 1} (up to the 1e-4 prior count)
    np.testing.assert_allclose(out, 1.0 / np.sqrt(np.var([1, 2, 1.5, 1])), rtol=1e-3)


# --- truncation: reward 1 per step, time limit 8, gamma 0.98 -> V(s0) = 1 / (1 - gamma) = 50 -----------------


class ConstantRewardEnv(gym.Env):
    """One observation, reward 1 every step, never terminates: only the time limit ends an episode."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(1, dtype=np.float32), {}

    def step(self, action):
        return np.ones(1, dtype=np.float32), 1.0, False, False, {}


class TruncationAsTermination(gym.Wrapper):
    """The bug: a time-limit end reported as termination (V(s_{t+1}) := 0)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or truncated, False, info


gym.register("test/ConstantReward-v0", entry_point=ConstantRewardEnv, max_episode_steps=8)


def fit_value_of_start(wrappers, gamma=0.98, iterations=60):
    """Policy evaluation with the real rollout + GAE code: regress V on lambda=1 returns, repeat."""
    torch.manual_seed(0)
    envs = make_vec_env("test/ConstantReward-v0", 4, seed=0, wrappers=wrappers)
    agent = actor_critic.Agent(
        envs.single_observation_space, envs.single_action_space, hidden_sizes=[]
    )  # V = w*1 + b
    optimizer = torch.optim.Adam(agent.critic.parameters(), lr=0.5)
    next_obs, _ = envs.reset(seed=0)
    for _ in range(iterations):
        rollout, next_obs, _ = actor_critic.collect_rollout(envs, agent, next_obs, num_steps=16)
        _, returns = actor_critic.compute_advantages(rollout, gamma, lam=1.0)
        for _ in range(30):
            loss = ((agent.get_value(rollout.obs.reshape(-1, 1)) - returns.reshape(-1)) ** 2).mean()
            optimizer.zero_grad(), loss.backward(), optimizer.step()
    return agent.get_value(torch.ones(1, 1)).item()


def test_truncation_bootstraps_to_one_over_one_minus_gamma():
    assert fit_value_of_start(wrappers=None) == pytest.approx(50.0, abs=1.0)
    # treated as termination, V is the mean discounted return-to-go over the 8 positions (about 7.5 at most)
    assert fit_value_of_start(wrappers=[TruncationAsTermination]) < 8.0


def test_rollout_next_values_use_final_obs_only_when_truncated():
    envs = make_vec_env("test/ConstantReward-v0", 2, seed=0)
    agent = actor_critic.Agent(envs.single_observation_space, envs.single_action_space, hidden_sizes=[])
    torch.nn.init.constant_(agent.critic[0].bias, 3.0)  # V(s) = 3 + w
    rollout, _, step = actor_critic.collect_rollout(envs, agent, envs.reset(seed=0)[0], num_steps=10)
    assert step == 20
    v = rollout.values[0, 0].item()
    assert rollout.dones[:, 0].tolist() == [0.0] * 7 + [1.0] + [0.0] * 2  # time limit after 8 steps
    assert rollout.terminated.sum() == 0
    torch.testing.assert_close(rollout.next_values, torch.full((10, 2), v))  # truncated: V(final obs), not 0


# --- clipping must act on a real update ------------------------------------------------------------------------


def test_clipping_acts_and_stop_gradient_old_policy_never_clips():
    torch.manual_seed(0)
    cfg = ppo.PPOConfig(num_envs=4, num_steps=128, mini_batch_size=64, num_ppo_epochs=4, learning_rate=3e-3)
    envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
    agent = actor_critic.Agent(envs.single_observation_space, envs.single_action_space, cfg.hidden_sizes)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    rollout, _, _ = actor_critic.collect_rollout(envs, agent, envs.reset(seed=0)[0], cfg.num_steps)
    advantages, returns = actor_critic.compute_advantages(rollout, cfg.gamma, cfg.gae_lambda)
    b_obs, b_actions, b_adv = rollout.obs.reshape(-1, 4), rollout.actions.reshape(-1), advantages.reshape(-1)
    # before any update the stored old log-probs are the current policy's: ratio exactly 1
    _, logprobs, _, _ = agent.get_action_and_value(b_obs, b_actions)
    torch.testing.assert_close(logprobs, rollout.logprobs.reshape(-1))

    stats = ppo.ppo_update(
        agent, optimizer, rollout, advantages, returns, cfg, cfg.clip_eps, cfg.value_clip_eps
    )
    assert len(stats["clip_fraction_per_epoch"]) == 4
    assert all(f > 0.01 for f in stats["clip_fraction_per_epoch"][1:])  # the policy moved: clipping acts

    _, logprobs, _, _ = agent.get_action_and_value(b_obs, b_actions)
    _, clip_fraction, approx_kl = ppo_policy_loss(logprobs, rollout.logprobs.reshape(-1), b_adv, cfg.clip_eps)
    assert clip_fraction > 0.02 and approx_kl > 0
    # the bug: "old" = stop-gradient of the current policy -> ratio 1, nothing is ever clipped
    _, clip_fraction, approx_kl = ppo_policy_loss(logprobs, logprobs.detach(), b_adv, cfg.clip_eps)
    assert clip_fraction == 0 and approx_kl == 0
    assert torch.exp(logprobs - logprobs.detach()).eq(1).all()


# --- runs: reproducibility, save/load, short learning ----------------------------------------------------------


def tiny(cls, tmp_path, name, **kw):
    base = dict(seed=3, total_timesteps=1024, num_envs=4, num_steps=64, output_dir=str(tmp_path / name))
    if cls is ppo.PPOConfig:
        base.update(mini_batch_size=64, num_ppo_epochs=2)
    return cls(**{**base, **kw})


@pytest.mark.parametrize("module", [ppo, a2c])
def test_seeded_runs_reproduce(tmp_path, module):
    cls = ppo.PPOConfig if module is ppo else a2c.A2CConfig
    first = module.train(tiny(cls, tmp_path, "a"))
    second = module.train(tiny(cls, tmp_path, "b"))
    assert len(first.episode_returns) > 10
    assert first.episode_returns == second.episode_returns
    for p, q in zip(first.agent.parameters(), second.agent.parameters()):
        assert torch.equal(p, q)
    assert (first.run_dir / "curve.png").is_file() and (first.run_dir / "model.pt").is_file()
    rows = (first.run_dir / "metrics.jsonl").read_text().splitlines()
    assert (
        len(rows) == len(first.episode_returns)
        and '"global_step"' in rows[0]
        and '"episode_return"' in rows[0]
    )


@pytest.mark.parametrize(
    "module,env_id,extra",
    [
        (ppo, "Pendulum-v1", dict(normalize_obs=True, normalize_reward=True)),  # Gaussian + obs normaliser
        (a2c, "CartPole-v1", {}),
    ],
)
def test_load_reproduces_greedy_actions(tmp_path, module, env_id, extra):
    cls = ppo.PPOConfig if module is ppo else a2c.A2CConfig
    result = module.train(tiny(cls, tmp_path, "run", env_id=env_id, **extra))
    loaded = module.load(result.run_dir)
    env = gym.make(env_id)
    obs = np.stack([env.reset(seed=i)[0] for i in range(32)])
    np.testing.assert_array_equal(loaded.greedy(obs), result.agent.greedy(obs))
    if extra.get("normalize_obs"):
        assert loaded.obs_norm.count.item() > 1000  # the statistics came back with the model
        torch.testing.assert_close(loaded.obs_norm.mean, result.agent.obs_norm.mean)


def test_ppo_learns_cartpole_quickly(tmp_path):
    result = ppo.train(ppo.PPOConfig(seed=1, total_timesteps=12_288, output_dir=str(tmp_path / "run")))
    assert np.mean(result.episode_returns[-20:]) >= 150


def test_first_solved_row_uses_the_trailing_window(tmp_path):
    # returns 1, 3, 5, 7 with window 2: trailing means 1, 2, 4, 6 -> first >= 4 at the third row
    rows = [
        {"global_step": 10 * (i + 1), "episode_return": r, "time": 0.5 * i}
        for i, r in enumerate([1, 3, 5, 7])
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert actor_critic.first_solved_row(tmp_path, 4.0, window=2) == rows[2]
    assert actor_critic.first_solved_step(tmp_path, 4.0, window=2) == 30
    assert actor_critic.first_solved_step(tmp_path, 6.5, window=2) is None  # best trailing mean is 6
    assert actor_critic.first_solved_step(tmp_path, None) is None
