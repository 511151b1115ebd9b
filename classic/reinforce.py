"""REINFORCE with a learned baseline: Williams 1992; Sutton & Barto (2nd ed.) section 13.4, "REINFORCE with
Baseline (episodic)".

    python -m classic.reinforce --env_id CartPole-v1 --seed 1 --total_timesteps 300000
    python -m classic.reinforce --env_id rlbook/Trading-v0 --total_timesteps 200000

Per update: generate `episodes_per_batch` whole episodes with pi(.|s, theta); compute the Monte-Carlo returns
G_t (classic.functional.discounted_returns); delta_t = G_t - v(S_t, w); step w along delta_t * grad v(S_t, w) and
theta along delta_t * grad ln pi(A_t|S_t, theta). Like most implementations we drop S&B's gamma^t factor on the
policy step and use Adam on the mean over the batch. `whiten_returns` standardises G over the batch first
(a common variance-reduction trick; the baseline then learns the whitened returns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from classic.cli import parse_config, parse_config_or_exit
from classic.common import (
    RENAMED_RUN_FIELDS,
    Run,
    check_env_id,
    check_hidden_sizes,
    check_positive,
    check_unit_interval,
    exit_if_output_dir_used,
    finished_episodes,
    layer_init,
    load_model,
    make_vec_env,
    prepare_output_dir,
    read_run_config,
    seed_everything,
)
from classic.dqn import TrainResult, default_run_dir
from classic.functional import (
    discounted_returns,
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_whiten,
)


@dataclass
class ReinforceConfig:
    """REINFORCE with a learned state-value baseline (S&B 13.4) on a discrete-action gymnasium env."""

    RENAMED: ClassVar[dict[str, str]] = dict(RENAMED_RUN_FIELDS)  # rlhf's names; old ones are errors

    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium id (discrete actions)"})
    seed: int = field(default=1, metadata={"help": "seed of python, numpy, torch and the environment"})
    total_timesteps: int = field(default=300_000, metadata={"help": "environment steps to train for"})
    learning_rate: float = field(
        default=3e-3, metadata={"help": "Adam learning rate of the policy (alpha_theta)"}
    )
    value_learning_rate: float = field(
        default=1e-3, metadata={"help": "Adam learning rate of the baseline (alpha_w)"}
    )
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    episodes_per_batch: int = field(default=4, metadata={"help": "whole episodes per gradient step"})
    hidden_sizes: list[int] = field(
        default_factory=lambda: [64, 64], metadata={"help": "tanh MLP hidden layers"}
    )
    baseline: bool = field(
        default=True, metadata={"help": "subtract the learned v(s, w) (False: plain REINFORCE)"}
    )
    whiten_returns: bool = field(default=True, metadata={"help": "standardise the returns G over each batch"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "global gradient-norm clip"})
    stop_at_return: float | None = field(
        default=None, metadata={"help": "stop early once the mean of the last 20 episode returns reaches it"}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "run directory (default runs/reinforce_<env>_<seed>)"}
    )
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads (results depend on it)"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace the run already in output_dir (without it, a used output_dir is refused)"},
    )

    def __post_init__(self) -> None:
        check_env_id(self.env_id)
        for name in ("total_timesteps", "learning_rate", "value_learning_rate", "episodes_per_batch"):
            check_positive(name, getattr(self, name))
        check_positive("max_grad_norm", self.max_grad_norm)
        check_positive("num_threads", self.num_threads)
        check_unit_interval("gamma", self.gamma)
        check_hidden_sizes("hidden_sizes", self.hidden_sizes)


def mlp(in_size: int, hidden_sizes: list[int], out_size: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(in_size, size)), nn.Tanh()]
        in_size = size
    return nn.Sequential(*layers, layer_init(nn.Linear(in_size, out_size), std=out_std))


class Agent(nn.Module):
    """pi(a|s, theta) as softmax logits, and the baseline v(s, w): two separate MLPs."""

    def __init__(self, obs_size: int, n_actions: int, hidden_sizes: list[int]) -> None:
        super().__init__()
        self.policy = mlp(obs_size, hidden_sizes, n_actions, out_std=0.01)
        self.value = mlp(obs_size, hidden_sizes, 1, out_std=1.0)

    @torch.no_grad()
    def act(self, obs: np.ndarray, greedy: bool = True) -> np.ndarray:
        """argmax_a pi(a|s) for a batch of observations (greedy=False samples A ~ pi(.|s) instead)."""
        logits = self.policy(torch.as_tensor(obs).float())  # (batch, n_actions)
        if greedy:
            return logits.argmax(dim=-1).numpy()
        # torch.multinomial rather than Categorical(...).sample(): the same draw, without the per-call checks
        return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1).numpy()


def make_env(cfg: ReinforceConfig) -> gym.vector.SyncVectorEnv:
    envs = make_vec_env(cfg.env_id, 1, cfg.seed)
    space, obs_space = envs.single_action_space, envs.single_observation_space
    if not isinstance(space, gym.spaces.Discrete) or len(obs_space.shape) != 1:
        envs.close()
        raise ValueError(
            f"env_id {cfg.env_id!r}: this REINFORCE needs a discrete action space and a vector observation, "
            f"got {space} and {obs_space}"
        )
    return envs


def generate_episodes(
    envs: gym.vector.SyncVectorEnv, agent: Agent, obs: np.ndarray, num_episodes: int, max_steps: int
) -> tuple[dict[str, torch.Tensor], np.ndarray, list[tuple[float, int]]]:
    """Follow pi for `num_episodes` whole episodes (or until `max_steps`); returns the batch as time-major
    tensors (T,), the next observation and the (return, length) of each finished episode."""
    b_obs, b_actions, b_rewards, b_dones, finished = [], [], [], [], []
    while len(finished) < num_episodes and len(b_rewards) < max_steps:
        action = agent.act(obs, greedy=False)
        next_obs, reward, terminated, truncated, infos = envs.step(action)
        b_obs.append(obs[0])
        b_actions.append(action[0])
        b_rewards.append(reward[0])
        b_dones.append(terminated[0] or truncated[0])
        finished += finished_episodes(infos)
        obs = next_obs
    batch = {
        "obs": torch.as_tensor(np.array(b_obs), dtype=torch.float32),  # (T, obs_size)
        "actions": torch.as_tensor(np.array(b_actions)),  # (T,)
        "rewards": torch.as_tensor(np.array(b_rewards), dtype=torch.float32),  # (T,)
        "dones": torch.as_tensor(np.array(b_dones), dtype=torch.float32),  # (T,)
    }
    return batch, obs, finished


def reinforce_update(
    agent: Agent, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], cfg: ReinforceConfig
) -> dict[str, float]:
    """One gradient step on a batch of whole episodes (the update in the module docstring). Returns its
    statistics, means over the batch's time steps before the step: policy_loss, the policy's entropy and, with
    the baseline, value_loss (0.5 * mean (G - v)^2) and explained_variance of v(S_t, w) as a predictor of the
    (whitened, if whiten_returns) returns G_t it regresses on."""
    # G_t = sum_{k=t+1}^{T} gamma^{k-t-1} R_k  (S&B eq. 3.9), restarted at each episode end
    returns = discounted_returns(batch["rewards"], cfg.gamma, batch["dones"])  # (T,)
    if cfg.whiten_returns:
        returns = masked_whiten(returns)
    values = agent.value(batch["obs"]).squeeze(-1)  # (T,)  v(S_t, w)
    # delta = G_t - v(S_t, w); the baseline changes the variance, not the expected gradient
    advantages = returns - values.detach() if cfg.baseline else returns
    logits = agent.policy(batch["obs"])  # (T, n_actions)
    logprobs = logprobs_from_logits(logits, batch["actions"])  # (T,) ln pi(A_t|S_t)
    policy_loss = -(logprobs * advantages).mean()
    value_loss = 0.5 * ((values - returns) ** 2).mean()
    optimizer.zero_grad()
    (policy_loss + (value_loss if cfg.baseline else 0.0)).backward()
    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
    optimizer.step()

    with torch.no_grad():  # logged only, so no graph: the entropy is of pi before the step, like the losses
        entropy = entropy_from_logits(logits.detach()).mean()
        stats = [policy_loss.detach(), entropy]
        names = ["policy_loss", "entropy"]
        if cfg.baseline:  # without one, v(s, w) is never trained: its loss would only be noise
            stats += [value_loss.detach(), explained_variance(values.detach(), returns)]
            names += ["value_loss", "explained_variance"]
    return dict(zip(names, torch.stack(stats).tolist()))  # one host sync


def train(cfg: ReinforceConfig) -> TrainResult:
    run_dir = cfg.output_dir or default_run_dir("reinforce", cfg.env_id, cfg.seed)
    run_dir = prepare_output_dir(run_dir, cfg.overwrite)  # before any work: never over another run
    seed_everything(cfg.seed, cfg.num_threads)
    envs = make_env(cfg)
    agent = Agent(envs.single_observation_space.shape[0], int(envs.single_action_space.n), cfg.hidden_sizes)
    optimizer = torch.optim.Adam(
        [
            {"params": agent.policy.parameters(), "lr": cfg.learning_rate},
            {"params": agent.value.parameters(), "lr": cfg.value_learning_rate},
        ]
    )
    run = Run(run_dir, cfg, cfg.total_timesteps, "reinforce")
    episode_steps: list[int] = []

    obs, _ = envs.reset(seed=cfg.seed)  # (1, obs_size)
    global_step = iteration = 0
    while global_step < cfg.total_timesteps:
        # generate episodes S_0, A_0, R_1, ..., S_{T-1}, A_{T-1}, R_T following pi(.|., theta)
        batch, obs, finished = generate_episodes(
            envs, agent, obs, cfg.episodes_per_batch, cfg.total_timesteps - global_step
        )
        steps = len(batch["rewards"])
        ends = global_step + np.flatnonzero(batch["dones"].numpy()) + 1
        for (episode_return, length), end in zip(finished, ends):
            run.episode(int(end), episode_return, length)
            episode_steps.append(int(end))
        global_step += steps
        run.step(steps)
        if len(finished) < cfg.episodes_per_batch:
            break  # out of steps mid-episode: an incomplete episode has no Monte-Carlo return

        stats = reinforce_update(agent, optimizer, batch, cfg)
        iteration += 1
        # one gradient step per batch of episodes: n_updates is the iteration
        lr = optimizer.param_groups[0]["lr"]
        run.update(global_step, iteration, **stats, n_updates=iteration, learning_rate=lr)

        stop = cfg.stop_at_return
        if stop is not None and len(run.returns) >= 20 and run.mean_recent_return(20) >= stop:
            break  # solved: the mean of the last 20 training episodes reached stop_at_return

    envs.close()
    run.close(agent)
    return TrainResult(agent, run.dir, list(run.returns), episode_steps, global_step)


def load(run_dir: str | Path) -> Agent:
    """The agent saved in `run_dir` (its config.json and model.pt); `agent.act(obs)` is greedy."""
    run_dir = Path(run_dir)
    cfg = read_run_config(ReinforceConfig, run_dir)
    envs = make_env(cfg)
    agent = Agent(envs.single_observation_space.shape[0], int(envs.single_action_space.n), cfg.hidden_sizes)
    envs.close()
    return load_model(agent, run_dir / "model.pt").eval()


def main(argv: list[str] | None = None) -> TrainResult:
    return train_and_report(parse_config(ReinforceConfig, argv))


def train_and_report(cfg: ReinforceConfig) -> TrainResult:
    result = train(cfg)
    last = result.episode_returns[-20:]
    print(
        f"reinforce {cfg.env_id} seed {cfg.seed}: {len(result.episode_returns)} episodes in {result.global_step} "
        f"steps, mean return of the last {len(last)}: {sum(last) / max(len(last), 1):.1f}; run dir {result.run_dir}"
    )
    return result


if __name__ == "__main__":
    cfg = parse_config_or_exit(ReinforceConfig, "python -m classic.reinforce")
    run_dir = cfg.output_dir or default_run_dir("reinforce", cfg.env_id, cfg.seed)
    exit_if_output_dir_used("python -m classic.reinforce", run_dir, cfg.overwrite)
    train_and_report(cfg)
