"""The actor-critic pieces PPO and A2C share: the network, one rollout of vectorised environments, and GAE.

Rollout buffers are time-major (T, N, ...) like CleanRL's; `classic.functional` wants time last, so
`compute_advantages` transposes. Truncated episodes bootstrap from V(final observation) (SAME_STEP auto-reset
puts it in `infos["final_obs"]`); terminated ones from 0 ("37 implementation details", time-limit handling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from classic.common import Run, finished_episodes, layer_init
from classic.functional import entropy_from_logits, gae_advantages, logprobs_from_logits
from classic.runlog import read_metrics
from classic.running_norm import RewardScaler, RunningNorm


class Agent(nn.Module):
    """Separate actor and critic MLPs (tanh). Discrete: logits. Continuous: Gaussian with a state-independent
    log std. The observation normaliser is part of the model, so its statistics are saved with it."""

    def __init__(
        self,
        obs_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: list[int],
        normalize_obs: bool = False,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        obs_dim = int(np.prod(obs_space.shape))
        self.continuous = isinstance(action_space, gym.spaces.Box)
        act_dim = int(np.prod(action_space.shape)) if self.continuous else int(action_space.n)
        self.obs_norm = RunningNorm(obs_dim) if normalize_obs else None

        def mlp(out: int, out_std: float) -> nn.Sequential:
            layers, d = [], obs_dim
            for h in hidden_sizes:
                layers += [layer_init(nn.Linear(d, h)), nn.Tanh()]
                d = h
            return nn.Sequential(*layers, layer_init(nn.Linear(d, out), std=out_std))

        self.critic = mlp(1, 1.0)
        self.actor = mlp(act_dim, 0.01)
        if self.continuous:
            self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
            self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))

    def normalize(self, obs: np.ndarray, update: bool = False) -> torch.Tensor:
        """Raw environment observations -> the network's input (batch, obs_dim)."""
        x = torch.as_tensor(obs, dtype=torch.float32).reshape(len(obs), -1)
        if self.obs_norm is None:
            return x
        if update:
            self.obs_norm.update(x)
        return self.obs_norm(x)

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).squeeze(-1)  # (batch,)

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None, with_entropy: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Sample (or score the given) actions: (action, logprob, entropy, value), each (batch, ...). A
        categorical policy skips its entropy (None) when `with_entropy` is False (acting; the PPO update logs it even
        without an entropy bonus); a Gaussian's is a closed form of log_std and always returned."""
        out = self.actor(x)
        if self.continuous:
            log_std = self.log_std.expand_as(out)
            if action is None:
                action = out + torch.randn_like(out) * log_std.exp()
            # log N(a; mu, sigma^2), summed over action dimensions (independent Gaussians)
            logprob = (
                -0.5 * ((action - out) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
            ).sum(-1)
            entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)
        else:
            if action is None:
                action = torch.multinomial(torch.softmax(out, -1), 1).squeeze(-1)
            logprob = logprobs_from_logits(out, action)
            entropy = entropy_from_logits(out) if with_entropy else None
        return action, logprob, entropy, self.get_value(x)

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic actions for a batch of raw observations: argmax logits, or the clipped Gaussian mean."""
        out = self.actor(self.normalize(obs))
        if self.continuous:
            return torch.maximum(torch.minimum(out, self.action_high), self.action_low).numpy()
        return out.argmax(-1).numpy()

    def env_action(self, action: torch.Tensor) -> np.ndarray:
        """Sampled actions -> what the environment accepts (Gaussian samples clipped to the action box)."""
        if self.continuous:
            return torch.maximum(torch.minimum(action, self.action_high), self.action_low).numpy()
        return action.numpy()


@dataclass
class Rollout:
    """T steps of N environments, time-major (T, N, ...). `next_values` is V(s_{t+1}) of the true next state:
    the final observation of a truncated episode, 0 after termination (masked in GAE)."""

    obs: torch.Tensor  # (T, N, obs_dim), normalised as the policy saw them
    actions: torch.Tensor  # (T, N) or (T, N, act_dim)
    logprobs: torch.Tensor  # (T, N) log pi_old(a_t|s_t), stored at rollout time
    rewards: torch.Tensor  # (T, N), scaled if reward normalisation is on
    terminated: torch.Tensor  # (T, N)
    dones: torch.Tensor  # (T, N) terminated or truncated
    values: torch.Tensor  # (T, N) V(s_t)
    next_values: torch.Tensor  # (T, N) V(s_{t+1})


def collect_rollout(
    envs: gym.vector.VectorEnv,
    agent: Agent,
    next_obs: np.ndarray,
    num_steps: int,
    run: Run | None = None,
    global_step: int = 0,
    reward_scaler: RewardScaler | None = None,
) -> tuple[Rollout, np.ndarray, int]:
    """Act for `num_steps` vector steps with the current policy. Returns (rollout, next raw obs, global_step)."""
    n = envs.num_envs
    obs, actions, logprobs, rewards, terminated, dones, values, final_values = ([] for _ in range(8))
    x = agent.normalize(next_obs, update=True)
    for _ in range(num_steps):
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(x, with_entropy=False)
        next_obs, reward, term, trunc, infos = envs.step(agent.env_action(action))
        global_step += n
        if run is not None:
            run.step(n)
            for ep_return, ep_length in finished_episodes(infos):
                run.episode(global_step, ep_return, ep_length)
        if reward_scaler is not None:
            reward = reward_scaler(reward, term | trunc)
        # V(s_{t+1}) for envs whose episode was truncated: bootstrap from the true final observation
        final_value = torch.zeros(n)
        truncated_only = np.flatnonzero(trunc & ~term)
        if len(truncated_only):
            final_obs = np.stack([infos["final_obs"][i] for i in truncated_only])
            with torch.no_grad():
                final_value[truncated_only] = agent.get_value(agent.normalize(final_obs))
        obs.append(x), actions.append(action), logprobs.append(logprob), values.append(value)
        rewards.append(torch.as_tensor(reward, dtype=torch.float32))
        terminated.append(torch.as_tensor(term, dtype=torch.float32))
        dones.append(torch.as_tensor(term | trunc, dtype=torch.float32))
        final_values.append(final_value)
        x = agent.normalize(next_obs, update=True)
    with torch.no_grad():
        last_value = agent.get_value(x)
    values_t, dones_t = torch.stack(values), torch.stack(dones)  # (T, N)
    # V(s_{t+1}) is V(s_t+1 as observed) unless the episode ended: then the final obs' value (0 if terminated)
    next_values = torch.cat([values_t[1:], last_value[None]])
    next_values = torch.where(dones_t.bool(), torch.stack(final_values), next_values)
    rollout = Rollout(
        torch.stack(obs), torch.stack(actions), torch.stack(logprobs), torch.stack(rewards),
        torch.stack(terminated), dones_t, values_t, next_values,
    )  # fmt: skip
    return rollout, next_obs, global_step


def compute_advantages(rollout: Rollout, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (eq. 11) over the rollout; functional.py wants time last, so transpose (T, N) -> (N, T) and back."""
    r = rollout
    advantages, returns = gae_advantages(
        r.rewards.T, r.values.T, r.next_values.T, r.terminated.T, r.dones.T, gamma, lam
    )
    return advantages.T, returns.T  # (T, N)


def upgrade_saved_config(values: dict) -> dict:
    """A PPO / A2C `config.json` saved before the rename to rlhf's names: the two renamed fields whose type
    changed get their new values (classic.cli.config_from_saved renames the keys afterwards)."""
    if isinstance(values.get("anneal_lr"), bool):
        values["anneal_lr"] = "linear" if values["anneal_lr"] else "constant"
    if isinstance(values.get("clip_vloss"), bool):
        # clip_vloss=True clipped the value with clip_coef (annealed with it): that epsilon, annealed the same
        # way, is value_clip_eps. A saved config always has clip_coef, it is the whole dataclass.
        values["clip_vloss"] = values["clip_coef"] if values["clip_vloss"] else None
    return values


@dataclass
class TrainResult:
    agent: Agent
    run_dir: Path
    global_step: int
    episode_returns: list[float]
    solved_step: int | None  # first step at which the last-20 mean reached stop_at_return
    wall_clock: float


def first_solved_row(run_dir: Path, threshold: float, window: int = 20) -> dict | None:
    """The metrics.jsonl row (`global_step`, `time` since training started, ...) at which the mean of the last
    `window` training episodes first reached `threshold`; None if it never did."""
    returns: list[float] = []
    for row in read_metrics(Path(run_dir) / "metrics.jsonl"):
        returns.append(row["episode_return"])
        if sum(returns[-window:]) / len(returns[-window:]) >= threshold:
            return row
    return None


def first_solved_step(run_dir: Path, threshold: float | None, window: int = 20) -> int | None:
    """The global step at which the mean of the last `window` training episodes first reached `threshold`."""
    row = None if threshold is None else first_solved_row(run_dir, threshold, window)
    return None if row is None else int(row["global_step"])
