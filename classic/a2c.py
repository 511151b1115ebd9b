"""Advantage Actor-Critic (A2C: the synchronous A3C of Mnih et al. 2016, Algorithm S3) with n-step returns.

    python -m classic.a2c --env_id CartPole-v1 --seed 1 --total_timesteps 100000
    python -m classic.a2c --env_id rlbook/Navigation-v0 --seed 1 --total_timesteps 200000

Each iteration: N environments act for n steps with the current policy (classic.ppo.collect_rollout), then
one gradient step on
    L = -mean_t[ A_t log pi(a_t|s_t) ] + c_v * mean_t[ (R_t - V(s_t))^2 ] - c_e * mean_t[ H(pi(.|s_t)) ]
where R_t is the n-step return bootstrapped from V(s_{t+n}) (GAE with lambda = 1, Schulman et al. 2016,
eq. 18; set gae_lambda < 1 for GAE) and A_t = R_t - V(s_t). Truncated episodes bootstrap from their final
observation, terminated ones from 0. The network, rollout and advantage code are PPO's (classic.actor_critic); only the update differs.
Defaults: Stable-Baselines3 / RL-Zoo for CartPole-v1 (8 envs, n=5, RMSprop lr 7e-4 alpha 0.99 eps 1e-5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from classic.actor_critic import (
    Agent,
    Rollout,
    TrainResult,
    collect_rollout,
    compute_advantages,
    first_solved_step,
    upgrade_saved_config,
)
from classic.cli import parse_config_or_exit
from classic.common import (
    RENAMED_RUN_FIELDS,
    Run,
    check_env_id,
    check_hidden_sizes,
    check_non_negative,
    check_positive,
    check_unit_interval,
    exit_if_output_dir_used,
    load_model,
    make_vec_env,
    prepare_output_dir,
    read_run_config,
    seed_everything,
)
from classic.functional import explained_variance, masked_whiten, value_loss
from classic.running_norm import RewardScaler


@dataclass
class A2CConfig:
    """A2C with n-step returns. Defaults: Stable-Baselines3 / RL-Zoo CartPole-v1."""

    # the names rlhf.config.PPOConfig uses for the same knobs; the old ones are errors that name the new one
    RENAMED: ClassVar[dict[str, str]] = {
        **RENAMED_RUN_FIELDS,
        "ent_coef": "entropy_coef",
        "norm_adv": "whiten_advantages",
        "anneal_lr": "lr_scheduler",
    }
    upgrade_saved = staticmethod(upgrade_saved_config)  # run configs saved before the rename still load

    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed for torch, numpy and the environments"})
    total_timesteps: int = field(default=100_000, metadata={"help": "environment steps (all envs together)"})
    num_envs: int = field(default=8, metadata={"help": "parallel environments N"})
    num_steps: int = field(default=5, metadata={"help": "n of the n-step return (steps per env per update)"})
    learning_rate: float = field(default=7e-4, metadata={"help": "learning rate"})
    lr_scheduler: Literal["linear", "constant"] = field(
        default="constant", metadata={"help": "linear: decay the learning rate linearly to 0 over the run"}
    )
    optimizer: Literal["rmsprop", "adam"] = field(default="rmsprop", metadata={"help": "rmsprop or adam"})
    rms_alpha: float = field(default=0.99, metadata={"help": "RMSprop smoothing constant"})
    optim_eps: float = field(default=1e-5, metadata={"help": "optimizer epsilon"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=1.0, metadata={"help": "1.0 = n-step returns; < 1 = GAE"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus c_e"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient c_v"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    whiten_advantages: bool = field(default=False, metadata={"help": "whiten advantages per batch"})
    normalize_obs: bool = field(
        default=False, metadata={"help": "running mean/std observation normalisation"}
    )
    normalize_reward: bool = field(default=False, metadata={"help": "scale rewards by std of returns"})
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "MLP hidden sizes"})
    init_log_std: float = field(default=0.0, metadata={"help": "initial log std of Gaussian actions"})
    stop_at_return: float | None = field(
        default=None, metadata={"help": "stop when the mean of the last 20 training episodes reaches this"}
    )
    num_threads: int = field(default=1, metadata={"help": "torch.set_num_threads"})
    output_dir: str = field(default="runs/a2c", metadata={"help": "where config, metrics, curve, model go"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace the run already in output_dir (without it, a used output_dir is refused)"},
    )

    def __post_init__(self) -> None:
        check_env_id(self.env_id)
        for name in ("total_timesteps", "num_envs", "num_steps", "learning_rate"):
            check_positive(name, getattr(self, name))
        for name in ("optim_eps", "max_grad_norm", "num_threads"):
            check_positive(name, getattr(self, name))
        for name in ("gamma", "gae_lambda", "rms_alpha"):
            check_unit_interval(name, getattr(self, name))
        for name in ("entropy_coef", "vf_coef"):
            check_non_negative(name, getattr(self, name))
        check_hidden_sizes("hidden_sizes", self.hidden_sizes)


def a2c_update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: A2CConfig,
) -> dict[str, float]:
    """One gradient step on the whole n-step batch (the loss in the module docstring). Returns its
    statistics over the batch, before the step: policy_loss, value_loss (0.5 * mean (R - V)^2, as in the loss),
    entropy, and explained_variance of the rollout's values as predictors of the returns."""
    b_obs = rollout.obs.reshape(-1, *rollout.obs.shape[2:])  # (N*n, obs_dim)
    b_actions = rollout.actions.reshape(-1, *rollout.actions.shape[2:])
    b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
    if cfg.whiten_advantages:
        b_advantages = masked_whiten(b_advantages)
    _, logprobs, entropy, values = agent.get_action_and_value(b_obs, b_actions)
    pg_loss = -(b_advantages * logprobs).mean()
    v_loss, _ = value_loss(values, values, b_returns, clip_eps=None)  # 0.5 * mean (R - V)^2
    mean_entropy = entropy.mean()
    loss = pg_loss + cfg.vf_coef * 2 * v_loss - cfg.entropy_coef * mean_entropy
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
    optimizer.step()
    ev = explained_variance(rollout.values.reshape(-1), b_returns)
    # one host sync for all four numbers
    stats = torch.stack([pg_loss.detach(), v_loss.detach(), mean_entropy.detach(), ev]).tolist()
    return dict(zip(("policy_loss", "value_loss", "entropy", "explained_variance"), stats))


def make_optimizer(agent: nn.Module, cfg: A2CConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            agent.parameters(), lr=cfg.learning_rate, alpha=cfg.rms_alpha, eps=cfg.optim_eps
        )
    return torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=cfg.optim_eps)


def train(cfg: A2CConfig) -> TrainResult:
    run_dir = prepare_output_dir(cfg.output_dir, cfg.overwrite)  # before any work: never over another run
    seed_everything(cfg.seed, cfg.num_threads)
    envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
    agent = Agent(
        envs.single_observation_space, envs.single_action_space, cfg.hidden_sizes, cfg.normalize_obs,
        cfg.init_log_std,
    )  # fmt: skip
    optimizer = make_optimizer(agent, cfg)
    reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma) if cfg.normalize_reward else None
    run = Run(run_dir, cfg, cfg.total_timesteps, f"A2C {cfg.env_id}")
    num_iterations = max(1, cfg.total_timesteps // (cfg.num_envs * cfg.num_steps))
    next_obs, _ = envs.reset(seed=cfg.seed)
    global_step, start = 0, time.time()
    for iteration in range(num_iterations):
        if cfg.lr_scheduler == "linear":
            optimizer.param_groups[0]["lr"] = (1.0 - iteration / num_iterations) * cfg.learning_rate
        rollout, next_obs, global_step = collect_rollout(
            envs, agent, next_obs, cfg.num_steps, run, global_step, reward_scaler
        )
        if cfg.stop_at_return is not None and run.mean_recent_return() >= cfg.stop_at_return:
            break
        advantages, returns = compute_advantages(rollout, cfg.gamma, cfg.gae_lambda)
        stats = a2c_update(agent, optimizer, rollout, advantages, returns, cfg)
        learning_rate = optimizer.param_groups[0]["lr"]
        # one optimizer step per iteration, so n_updates is the iteration (SB3's A2C counts the same)
        run.update(global_step, iteration + 1, **stats, n_updates=iteration + 1, learning_rate=learning_rate)
    envs.close()
    run.close(agent)
    solved = first_solved_step(run.dir, cfg.stop_at_return)
    return TrainResult(agent, run.dir, global_step, run.returns, solved, time.time() - start)


def load(run_dir: str | Path) -> Agent:
    """The trained agent of a run directory; use `agent.greedy(obs)`."""
    run_dir = Path(run_dir)
    cfg = read_run_config(A2CConfig, run_dir)
    env = gym.make(cfg.env_id)
    agent = Agent(
        env.observation_space, env.action_space, cfg.hidden_sizes, cfg.normalize_obs, cfg.init_log_std
    )
    env.close()
    return load_model(agent, run_dir / "model.pt")


if __name__ == "__main__":
    cfg = parse_config_or_exit(A2CConfig, "python -m classic.a2c")
    exit_if_output_dir_used("python -m classic.a2c", cfg.output_dir, cfg.overwrite)
    result = train(cfg)
    print(
        f"{result.global_step} steps in {result.wall_clock:.1f}s; mean of last 20 episode returns "
        f"{np.mean(result.episode_returns[-20:]):.1f}; run dir {result.run_dir}"
    )
