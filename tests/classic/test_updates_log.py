"""updates.jsonl, the per-update log of the classic algorithms: each statistic is checked against the same number
computed by hand in the test (the minibatch means of a PPO update replayed step by step, A2C's and REINFORCE's
losses from their definitions, DQN's windows of recorded gradient steps and its epsilon schedule), and the rows'
bookkeeping (one per iteration, global_step, learning-rate schedule, target_kl stops) against the config."""

import copy
import json
import types

import numpy as np
import pytest
import torch

from classic import a2c, dqn, ppo, reinforce
from classic.actor_critic import Agent, collect_rollout, compute_advantages
from classic.common import make_vec_env


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("RLBOOK_NO_PROGRESS", "1")
    torch.set_num_threads(1)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def explained_variance_by_hand(values: torch.Tensor, returns: torch.Tensor) -> float:
    v, r = values.double().numpy().ravel(), returns.double().numpy().ravel()
    return 1.0 - np.var(r - v) / np.var(r)


def fixed_rollout(cfg, seed=0):
    """An untrained CartPole agent and one rollout of it, with GAE advantages and returns."""
    torch.manual_seed(seed)
    envs = make_vec_env(cfg.env_id, cfg.num_envs, seed)
    agent = Agent(envs.single_observation_space, envs.single_action_space, cfg.hidden_sizes)
    rollout, _, _ = collect_rollout(envs, agent, envs.reset(seed=seed)[0], cfg.num_steps)
    advantages, returns = compute_advantages(rollout, cfg.gamma, cfg.gae_lambda)
    return agent, rollout, advantages, returns


# --- PPO --------------------------------------------------------------------------------------------------------


def ppo_update_by_hand(agent, optimizer, rollout, advantages, returns, cfg):
    """PPO's K epochs written out from the paper's formulas (Categorical log-probs and entropy, eq. 7 clipping,
    the baselines value clipping); returns every minibatch's statistics, in order."""
    b_obs, b_actions = rollout.obs.reshape(-1, 4), rollout.actions.reshape(-1)
    old_logprobs, old_values = rollout.logprobs.reshape(-1), rollout.values.reshape(-1)
    b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
    eps, v_eps = cfg.clip_eps, cfg.value_clip_eps
    seen = {name: [] for name in ppo.MINIBATCH_STATS}
    for _ in range(cfg.num_ppo_epochs):
        for mb in torch.randperm(len(b_obs)).split(cfg.mini_batch_size):
            dist = torch.distributions.Categorical(logits=agent.actor(b_obs[mb]))
            values = agent.critic(b_obs[mb]).squeeze(-1)
            adv = b_advantages[mb]
            adv = (adv - adv.mean()) / torch.sqrt(adv.var() + 1e-8)
            log_ratio = dist.log_prob(b_actions[mb]) - old_logprobs[mb]
            ratio = log_ratio.exp()
            policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()
            clipped = ((ratio < 1 - eps) & (adv < 0)) | ((ratio > 1 + eps) & (adv > 0))
            v_clipped = old_values[mb] + (values - old_values[mb]).clamp(-v_eps, v_eps)
            err, err_clipped = (values - b_returns[mb]) ** 2, (v_clipped - b_returns[mb]) ** 2
            value_loss = 0.5 * torch.max(err, err_clipped).mean()
            entropy = dist.entropy().mean()
            loss = policy_loss + cfg.vf_coef * 2 * value_loss - cfg.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()
            for name, value in (
                ("policy_loss", policy_loss),
                ("value_loss", value_loss),
                ("entropy", entropy),
                ("approx_kl", (ratio - 1 - log_ratio).mean()),
                ("clip_fraction", clipped.float().mean()),
                ("value_clip_fraction", (err_clipped > err).float().mean()),
            ):
                seen[name].append(value.item())
    return seen


def test_ppo_update_logs_the_mean_over_every_minibatch_of_every_epoch():
    cfg = ppo.PPOConfig(
        num_envs=4, num_steps=32, mini_batch_size=32, num_ppo_epochs=3, learning_rate=3e-3,
        entropy_coef=0.01, value_clip_eps=0.2,
    )  # fmt: skip
    agent, rollout, advantages, returns = fixed_rollout(cfg)
    twin = copy.deepcopy(agent)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    twin_optimizer = torch.optim.Adam(twin.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    torch.manual_seed(1)  # the same minibatch permutations for both
    stats = ppo.ppo_update(
        agent, optimizer, rollout, advantages, returns, cfg, cfg.clip_eps, cfg.value_clip_eps
    )
    torch.manual_seed(1)
    by_hand = ppo_update_by_hand(twin, twin_optimizer, rollout, advantages, returns, cfg)

    assert stats["epochs"] == 3 and len(by_hand["policy_loss"]) == 3 * 4
    for name in ppo.MINIBATCH_STATS:
        assert stats["per_minibatch"][name] == pytest.approx(by_hand[name], rel=1e-4, abs=1e-6), name
        assert stats[name] == pytest.approx(np.mean(by_hand[name]), rel=1e-4, abs=1e-7), name
    clip = by_hand["clip_fraction"]
    assert stats["clip_fraction_per_epoch"] == pytest.approx([np.mean(clip[i : i + 4]) for i in (0, 4, 8)])
    # the logged value is the mean, not the first minibatch's: there the ratio is 1, nothing clipped, KL 0
    assert clip[0] == 0 and abs(by_hand["approx_kl"][0]) < 1e-6
    assert stats["clip_fraction"] > 0.01 and stats["approx_kl"] > 1e-4 and stats["value_clip_fraction"] > 0
    ev = explained_variance_by_hand(rollout.values, returns)
    assert stats["explained_variance"] == pytest.approx(ev, rel=1e-4)
    for p, q in zip(agent.parameters(), twin.parameters()):  # the hand replay is the same algorithm
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target_kl", [None, 1e-6])
def test_ppo_train_writes_one_update_row_per_iteration(tmp_path, target_kl):
    cfg = ppo.PPOConfig(
        seed=3, total_timesteps=1024, num_envs=4, num_steps=64, mini_batch_size=64, num_ppo_epochs=2,
        target_kl=target_kl, output_dir=str(tmp_path),
    )  # fmt: skip
    result = ppo.train(cfg)
    rows = read_rows(tmp_path / "updates.jsonl")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]  # 1024 steps / (4 envs * 64 steps)
    assert [r["global_step"] for r in rows] == [256, 512, 768, 1024]
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-3 * (1 - i / 4) for i in range(4)])
    assert [r["clip_eps"] for r in rows] == pytest.approx([0.2 * (1 - i / 4) for i in range(4)])
    # a KL bound of 1e-6 is crossed by every first epoch: 1 epoch of 4 minibatches instead of 2
    epochs = 2 if target_kl is None else 1
    assert [r["epochs"] for r in rows] == [epochs] * 4
    assert [r["n_updates"] for r in rows] == [4 * epochs * i for i in (1, 2, 3, 4)]
    assert all(r["steps_per_s"] > 0 and -1 <= r["explained_variance"] <= 1 for r in rows)
    # metrics.jsonl keeps one row per episode
    episodes = read_rows(tmp_path / "metrics.jsonl")
    assert [r["episode_return"] for r in episodes] == result.episode_returns
    assert (tmp_path / "updates.png").stat().st_size > 0


# --- A2C --------------------------------------------------------------------------------------------------------


def test_a2c_update_statistics_by_hand():
    cfg = a2c.A2CConfig(num_envs=4, num_steps=5, entropy_coef=0.01)
    agent, rollout, advantages, returns = fixed_rollout(cfg)
    obs, actions = rollout.obs.reshape(-1, 4), rollout.actions.reshape(-1)
    with torch.no_grad():  # the statistics are of the policy and critic before the step
        dist = torch.distributions.Categorical(logits=agent.actor(obs))
        values = agent.critic(obs).squeeze(-1)
    adv, ret = advantages.reshape(-1), returns.reshape(-1)
    stats = a2c.a2c_update(agent, a2c.make_optimizer(agent, cfg), rollout, advantages, returns, cfg)
    assert stats["policy_loss"] == pytest.approx(-(adv * dist.log_prob(actions)).mean().item(), rel=1e-5)
    assert stats["value_loss"] == pytest.approx(0.5 * ((ret - values) ** 2).mean().item(), rel=1e-5)
    assert stats["entropy"] == pytest.approx(dist.entropy().mean().item(), rel=1e-5)
    ev = explained_variance_by_hand(rollout.values, returns)
    assert stats["explained_variance"] == pytest.approx(ev, rel=1e-4)


def test_a2c_train_rows(tmp_path):
    cfg = a2c.A2CConfig(seed=3, total_timesteps=800, lr_scheduler="linear", output_dir=str(tmp_path))
    a2c.train(cfg)
    rows = read_rows(tmp_path / "updates.jsonl")
    assert len(rows) == 800 // (8 * 5)
    assert [r["global_step"] for r in rows] == [40 * i for i in range(1, 21)]
    assert [r["n_updates"] for r in rows] == [r["iteration"] for r in rows] == list(range(1, 21))
    assert [r["learning_rate"] for r in rows] == pytest.approx([7e-4 * (1 - i / 20) for i in range(20)])


# --- REINFORCE --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", [True, False])
def test_reinforce_update_statistics_by_hand(baseline):
    cfg = reinforce.ReinforceConfig(seed=5, baseline=baseline)
    torch.manual_seed(0)
    envs = reinforce.make_env(cfg)
    agent = reinforce.Agent(4, 2, cfg.hidden_sizes)
    batch, _, finished = reinforce.generate_episodes(envs, agent, envs.reset(seed=5)[0], 2, 10_000)
    assert len(finished) == 2
    # G_t restarted at each episode end, then whitened over the batch
    rewards, dones = batch["rewards"].double().numpy(), batch["dones"].numpy()
    g, running = np.zeros_like(rewards), 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + cfg.gamma * running * (1.0 - dones[t])
        g[t] = running
    g = (g - g.mean()) / np.sqrt(g.var(ddof=1) + 1e-8)
    with torch.no_grad():
        dist = torch.distributions.Categorical(logits=agent.policy(batch["obs"]))
        logprobs = dist.log_prob(batch["actions"]).double().numpy()
        v = agent.value(batch["obs"]).squeeze(-1).double().numpy()
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate)
    stats = reinforce.reinforce_update(agent, optimizer, batch, cfg)
    advantages = g - v if baseline else g
    assert stats["policy_loss"] == pytest.approx(-(logprobs * advantages).mean(), rel=1e-4, abs=1e-6)
    assert stats["entropy"] == pytest.approx(dist.entropy().mean().item(), rel=1e-5)
    if baseline:
        assert stats["value_loss"] == pytest.approx(0.5 * ((v - g) ** 2).mean(), rel=1e-4)
        assert stats["explained_variance"] == pytest.approx(1 - np.var(g - v) / np.var(g), rel=1e-4, abs=1e-5)
    else:  # an untrained v(s, w) says nothing: no value columns
        assert set(stats) == {"policy_loss", "entropy"}


def test_reinforce_rows_are_written_where_each_batch_of_episodes_ends(tmp_path):
    result = reinforce.train(
        reinforce.ReinforceConfig(seed=7, total_timesteps=2000, output_dir=str(tmp_path))
    )
    rows = read_rows(tmp_path / "updates.jsonl")
    # one update per 4 whole episodes, made when the 4th ends; a last incomplete batch makes no update
    assert len(rows) == len(result.episode_steps) // 4 > 3
    assert [r["global_step"] for r in rows] == result.episode_steps[3::4][: len(rows)]
    assert [r["iteration"] for r in rows] == [r["n_updates"] for r in rows] == list(range(1, len(rows) + 1))


# --- DQN --------------------------------------------------------------------------------------------------------


def test_dqn_rows_average_windows_of_gradient_steps_and_follow_the_epsilon_schedule(tmp_path, monkeypatch):
    seen = []  # (loss, mean Q(s, a)) of every gradient step, recorded where the loss is computed

    def recording_huber(q, y):
        loss = torch.nn.functional.smooth_l1_loss(q, y)
        seen.append((loss.item(), q.mean().item()))
        return loss

    monkeypatch.setattr(dqn, "F", types.SimpleNamespace(smooth_l1_loss=recording_huber))
    cfg = dqn.DQNConfig(
        seed=2, total_timesteps=1000, learning_starts=200, train_frequency=4, gradient_steps=3, log_interval=50,
        exploration_fraction=0.8, hidden_sizes=[32], output_dir=str(tmp_path),
    )  # fmt: skip
    dqn.train(cfg)
    rows = read_rows(tmp_path / "updates.jsonl")
    # 200 training phases (steps 204, 208, ..., 1000) of 3 gradient steps: a row once 50 have accumulated,
    # i.e. every 17 phases (51 steps), and the remaining 13 phases (39 steps) at the end
    assert len(seen) == 600
    assert [r["n_updates"] for r in rows] == [51 * k for k in range(1, 12)] + [600]
    assert [r["iteration"] for r in rows] == [17 * k for k in range(1, 12)] + [200]
    assert [r["global_step"] for r in rows] == [200 + 4 * r["iteration"] for r in rows]
    start = 0
    for row in rows:
        window = np.array(seen[start : row["n_updates"]])
        assert row["loss"] == pytest.approx(window[:, 0].mean(), rel=1e-5)
        assert row["q_values"] == pytest.approx(window[:, 1].mean(), rel=1e-5, abs=1e-6)
        start = row["n_updates"]
    expected = [dqn.linear_schedule(1.0, 0.02, 800, r["global_step"]) for r in rows]
    assert [r["epsilon"] for r in rows] == pytest.approx(expected)
    assert expected[0] == pytest.approx(1 - 0.98 * 268 / 800) and expected[-1] == 0.02
    assert (tmp_path / "updates.png").stat().st_size > 0


def test_dqn_run_without_updates_has_an_empty_log_and_no_plot(tmp_path):
    dqn.train(
        dqn.DQNConfig(total_timesteps=100, learning_starts=200, hidden_sizes=[8], output_dir=str(tmp_path))
    )
    assert (tmp_path / "updates.jsonl").read_text() == ""
    assert not (tmp_path / "updates.png").exists() and (tmp_path / "curve.png").exists()


def test_dqn_log_interval_must_be_positive():
    with pytest.raises(ValueError, match="^log_interval must be positive, got 0$"):
        dqn.DQNConfig(log_interval=0)
