"""Proximal Policy Optimisation (Schulman et al. 2017, Algorithm 1) for discrete and continuous actions.

    python -m classic.ppo --env_id CartPole-v1 --seed 1 --total_timesteps 50000
    python -m classic.ppo --config classic/configs/ppo_pendulum.yaml --seed 1
    python -m classic.ppo --config classic/configs/ppo_bipedalwalker.yaml --total_timesteps 500000

Algorithm 1 (collect_rollout and compute_advantages are in classic.actor_critic, shared with A2C):
              for iteration = 1, 2, ...
                  run the old policy pi_old in N environments for T steps        -> collect_rollout
                  compute advantage estimates A_1..A_T (GAE, eq. 11)             -> compute_advantages
                  optimise the surrogate L (eq. 9) for K epochs, minibatch M <= NT -> ppo_update
With the implementation details of "The 37 Implementation Details of PPO" (Huang et al. 2022), each a flag:
orthogonal init, Adam eps 1e-5, LR annealing, minibatch advantage normalisation, value clipping, global
grad-norm clipping, observation/reward normalisation for continuous control. Defaults are RL-Zoo's CartPole-v1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

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
from classic.functional import explained_variance, masked_whiten, ppo_policy_loss, value_loss
from classic.running_norm import RewardScaler


@dataclass
class PPOConfig:
    """PPO (clipped surrogate, GAE). Defaults: RL-Zoo's CartPole-v1 hyperparameters."""

    # the names rlhf.config.PPOConfig uses for the same knobs; the old ones are errors that name the new one
    RENAMED: ClassVar[dict[str, str]] = {
        **RENAMED_RUN_FIELDS,
        "clip_coef": "clip_eps",
        "clip_vloss": "value_clip_eps",
        "ent_coef": "entropy_coef",
        "update_epochs": "num_ppo_epochs",
        "minibatch_size": "mini_batch_size",
        "norm_adv": "whiten_advantages",
        "anneal_lr": "lr_scheduler",
    }
    upgrade_saved = staticmethod(upgrade_saved_config)  # run configs saved before the rename still load

    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    seed: int = field(default=1, metadata={"help": "seed for torch, numpy and the environments"})
    total_timesteps: int = field(default=100_000, metadata={"help": "environment steps (all envs together)"})
    num_envs: int = field(default=8, metadata={"help": "parallel environments N"})
    num_steps: int = field(default=32, metadata={"help": "steps per environment per rollout T"})
    mini_batch_size: int = field(default=256, metadata={"help": "minibatch size M (N*T must be a multiple)"})
    num_ppo_epochs: int = field(default=20, metadata={"help": "epochs K over each rollout"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    lr_scheduler: Literal["linear", "constant"] = field(
        default="linear", metadata={"help": "linear: decay the learning rate linearly to 0 over the run"}
    )
    adam_eps: float = field(default=1e-5, metadata={"help": "Adam epsilon (1e-5 as in baselines)"})
    gamma: float = field(default=0.98, metadata={"help": "discount factor"})
    gae_lambda: float = field(default=0.8, metadata={"help": "GAE lambda (eq. 11)"})
    clip_eps: float = field(default=0.2, metadata={"help": "surrogate clipping epsilon (eq. 7)"})
    anneal_clip: bool = field(
        default=True, metadata={"help": "decay clip_eps and value_clip_eps linearly to 0 over the run"}
    )
    value_clip_eps: float | None = field(
        default=None,
        metadata={"help": "clip the value update to old value +- this (annealed like clip_eps); None = off"},
    )
    whiten_advantages: bool = field(default=True, metadata={"help": "whiten advantages per minibatch"})
    entropy_coef: float = field(default=0.0, metadata={"help": "entropy bonus c2 (eq. 9)"})
    vf_coef: float = field(default=0.5, metadata={"help": "value loss coefficient c1 (eq. 9)"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    target_kl: float | None = field(default=None, metadata={"help": "stop the epochs early above this KL"})
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
    output_dir: str = field(default="runs/ppo", metadata={"help": "where config, metrics, curve, model go"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace the run already in output_dir (without it, a used output_dir is refused)"},
    )

    def __post_init__(self) -> None:
        check_env_id(self.env_id)
        for name in ("total_timesteps", "num_envs", "num_steps", "mini_batch_size", "num_ppo_epochs"):
            check_positive(name, getattr(self, name))
        for name in ("learning_rate", "adam_eps", "clip_eps", "max_grad_norm", "num_threads"):
            check_positive(name, getattr(self, name))
        for name in ("value_clip_eps", "target_kl"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        for name in ("gamma", "gae_lambda"):
            check_unit_interval(name, getattr(self, name))
        for name in ("entropy_coef", "vf_coef"):
            check_non_negative(name, getattr(self, name))
        check_hidden_sizes("hidden_sizes", self.hidden_sizes)
        if (self.num_envs * self.num_steps) % self.mini_batch_size:
            raise ValueError(
                f"mini_batch_size {self.mini_batch_size} must divide num_envs*num_steps "
                f"= {self.num_envs * self.num_steps}"
            )


# what ppo_update records for every minibatch, in this order (SB3 / CleanRL / rlhf trainer names)
MINIBATCH_STATS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "value_clip_fraction",
)


def ppo_update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
    clip_eps: float,
    value_clip_eps: float | None,
) -> dict[str, Any]:
    """K epochs of minibatch SGD on L^CLIP - c1 L^VF + c2 S (eq. 9), with this iteration's (possibly annealed)
    clipping epsilons.

    Returns the update's statistics: each of MINIBATCH_STATS as the mean over every minibatch of every epoch
    run (what SB3 logs for its losses and clip fraction; SB3's approx_kl is the last epoch's mean, ours is over
    all epochs like the rest), measured on the minibatch before its optimizer step; `explained_variance` of the
    rollout's values as predictors of the returns; `epochs` run (fewer than num_ppo_epochs after a target_kl
    stop); `clip_fraction_per_epoch`; and `per_minibatch`, each statistic's values in the order they were made."""
    obs_shape = rollout.obs.shape[2:]
    b_obs = rollout.obs.reshape(-1, *obs_shape)  # (N*T, obs_dim)
    b_actions = rollout.actions.reshape(-1, *rollout.actions.shape[2:])
    b_logprobs, b_values = rollout.logprobs.reshape(-1), rollout.values.reshape(-1)
    b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)
    batch_size = len(b_obs)
    # with no entropy bonus the entropy is only logged: it stays out of the loss, so the gradients are those of
    # a loop that never computes it
    with_entropy = cfg.entropy_coef != 0
    # one (len(MINIBATCH_STATS),) tensor per minibatch, read back once at the end: no host sync per minibatch
    mb_stats: list[torch.Tensor] = []
    epochs = 0
    for _epoch in range(cfg.num_ppo_epochs):
        b_inds = torch.randperm(batch_size)
        epoch_kl = []
        for start in range(0, batch_size, cfg.mini_batch_size):
            mb_inds = b_inds[start : start + cfg.mini_batch_size]
            _, logprobs, entropy, values = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
            mb_entropy = entropy.mean()
            mb_advantages = b_advantages[mb_inds]
            if cfg.whiten_advantages:
                mb_advantages = masked_whiten(mb_advantages)
            pg_loss, clip_frac, approx_kl = ppo_policy_loss(
                logprobs, b_logprobs[mb_inds], mb_advantages, clip_eps
            )
            v_loss, v_clip_frac = value_loss(values, b_values[mb_inds], b_returns[mb_inds], value_clip_eps)
            loss = pg_loss + cfg.vf_coef * 2 * v_loss  # value_loss has the 0.5
            if with_entropy:
                loss = loss - cfg.entropy_coef * mb_entropy
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm, foreach=True)
            optimizer.step()
            epoch_kl.append(approx_kl)
            mb_stats.append(
                torch.stack([pg_loss, v_loss, mb_entropy, approx_kl, clip_frac, v_clip_frac]).detach()
            )
        epochs += 1
        # the only sync inside the loop, and only when its answer decides whether to go on
        if cfg.target_kl is not None and torch.stack(epoch_kl).mean().item() > cfg.target_kl:
            break
    per_minibatch = torch.stack(mb_stats).T.tolist()  # (len(MINIBATCH_STATS), epochs * minibatches)
    stats: dict[str, Any] = {name: sum(v) / len(v) for name, v in zip(MINIBATCH_STATS, per_minibatch)}
    clip = per_minibatch[MINIBATCH_STATS.index("clip_fraction")]
    per_epoch = len(clip) // epochs
    stats["clip_fraction_per_epoch"] = [
        sum(clip[i : i + per_epoch]) / per_epoch for i in range(0, len(clip), per_epoch)
    ]
    stats["explained_variance"] = explained_variance(b_values, b_returns).item()
    stats["epochs"] = epochs
    stats["per_minibatch"] = dict(zip(MINIBATCH_STATS, per_minibatch))
    return stats


def train(cfg: PPOConfig) -> TrainResult:
    run_dir = prepare_output_dir(cfg.output_dir, cfg.overwrite)  # before any work: never over another run
    seed_everything(cfg.seed, cfg.num_threads)
    envs = make_vec_env(cfg.env_id, cfg.num_envs, cfg.seed)
    agent = Agent(
        envs.single_observation_space, envs.single_action_space, cfg.hidden_sizes, cfg.normalize_obs,
        cfg.init_log_std,
    )  # fmt: skip
    # fused: one kernel for all parameters (the per-tensor loop cost more than the MLP's backward)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=True)
    reward_scaler = RewardScaler(cfg.num_envs, cfg.gamma) if cfg.normalize_reward else None
    run = Run(run_dir, cfg, cfg.total_timesteps, f"PPO {cfg.env_id}")
    batch_size = cfg.num_envs * cfg.num_steps
    num_iterations = max(1, cfg.total_timesteps // batch_size)
    next_obs, _ = envs.reset(seed=cfg.seed)
    global_step, start, n_updates = 0, time.time(), 0
    for iteration in range(num_iterations):
        frac = 1.0 - iteration / num_iterations  # linear annealing to 0
        if cfg.lr_scheduler == "linear":
            optimizer.param_groups[0]["lr"] = frac * cfg.learning_rate
        # both epsilons shrink by the same factor: the old clip_vloss=True clipped the value with the annealed
        # policy epsilon, which value_clip_eps = clip_eps reproduces exactly
        clip_scale = frac if cfg.anneal_clip else 1.0
        clip_eps = cfg.clip_eps * clip_scale
        value_clip_eps = None if cfg.value_clip_eps is None else cfg.value_clip_eps * clip_scale
        rollout, next_obs, global_step = collect_rollout(
            envs, agent, next_obs, cfg.num_steps, run, global_step, reward_scaler
        )
        if cfg.stop_at_return is not None and run.mean_recent_return() >= cfg.stop_at_return:
            break
        advantages, returns = compute_advantages(rollout, cfg.gamma, cfg.gae_lambda)
        stats = ppo_update(agent, optimizer, rollout, advantages, returns, cfg, clip_eps, value_clip_eps)
        n_updates += stats["epochs"] * (batch_size // cfg.mini_batch_size)
        run.update(
            global_step,
            iteration + 1,
            **{name: stats[name] for name in (*MINIBATCH_STATS, "explained_variance", "epochs")},
            n_updates=n_updates,  # optimizer steps since the start (SB3's PPO counts epochs instead)
            learning_rate=optimizer.param_groups[0]["lr"],
            clip_eps=clip_eps,
        )
    envs.close()
    run.close(agent)
    solved = first_solved_step(run.dir, cfg.stop_at_return)
    return TrainResult(agent, run.dir, global_step, run.returns, solved, time.time() - start)


def load(run_dir: str | Path) -> Agent:
    """The trained agent of a run directory (observation normaliser included); use `agent.greedy(obs)`."""
    run_dir = Path(run_dir)
    cfg = read_run_config(PPOConfig, run_dir)
    env = gym.make(cfg.env_id)
    agent = Agent(
        env.observation_space, env.action_space, cfg.hidden_sizes, cfg.normalize_obs, cfg.init_log_std
    )
    env.close()
    return load_model(agent, run_dir / "model.pt")


if __name__ == "__main__":
    cfg = parse_config_or_exit(PPOConfig, "python -m classic.ppo")
    exit_if_output_dir_used("python -m classic.ppo", cfg.output_dir, cfg.overwrite)
    result = train(cfg)
    print(
        f"{result.global_step} steps in {result.wall_clock:.1f}s; mean of last 20 episode returns "
        f"{np.mean(result.episode_returns[-20:]):.1f}; run dir {result.run_dir}"
    )
