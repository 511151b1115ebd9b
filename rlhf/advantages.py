"""From sequence scores and per-token KL to per-token advantages: one registry of estimators.

Each `Estimator` declares in one place what it needs (a critic, a minimum group size), how it turns the
completions' scores into a sequence-level signal (its baseline), and whether its token advantages are whitened
over the whole batch. `config.py` validates against the registry and `trainer.py` reads it; neither branches on an
estimator's name. Pure torch; the math itself lives in `classic.functional`.

Every critic-free estimator is: baseline(scores) at the last token, -beta * KL_t on every token, returns-to-go,
optionally whitened over all tokens of all ranks. GAE replaces the returns-to-go with the critic's GAE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from classic import functional as F

# sums a tensor over all processes (the identity on one process): batch-wide statistics are all-rank statistics
Reduce = Callable[[torch.Tensor], torch.Tensor]
# concatenates a 1-D tensor over all processes, in rank order (the identity on one process)
Gather = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class Estimator:
    """What an advantage estimator is and needs.

    baseline: (scores (batch,), group_size, scale_rewards, reduce) -> the sequence-level signal that replaces
    each score (None for gae, whose baseline is the critic). whiten: the default of `whiten_advantages` (whiten
    the final token advantages over all tokens of the batch, all ranks). step_groups: env episodes only; each
    reply also gets its step-level advantage (`step_group_advantages`)."""

    name: str
    source: str
    needs_critic: bool
    min_group_size: int
    whiten: bool
    baseline: Callable[[torch.Tensor, int, str, Reduce], torch.Tensor] | None
    step_groups: bool = False


def _no_baseline(scores: torch.Tensor, group_size: int, scale: str, reduce: Reduce) -> torch.Tensor:
    return scores


def _group_mean(scores: torch.Tensor, group_size: int, scale: str, reduce: Reduce) -> torch.Tensor:
    return F.group_mean_baseline_advantages(scores, group_size)


def _rloo(scores: torch.Tensor, group_size: int, scale: str, reduce: Reduce) -> torch.Tensor:
    return F.rloo_advantages(scores, group_size)


def _grpo(scores: torch.Tensor, group_size: int, scale: str, reduce: Reduce) -> torch.Tensor:
    batch_std = global_std(scores, reduce) if scale == "batch" else None
    return F.grpo_advantages(scores, group_size, scale=scale, batch_std=batch_std)


ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator(
            "gae",
            "PPO with a critic: GAE over per-token rewards (Schulman et al. 2016; Ziegler et al. 2019; N+ details)",
            needs_critic=True,
            min_group_size=1,
            whiten=True,
            baseline=None,
        ),
        Estimator(
            "reinforce_pp",
            "REINFORCE++ (Hu et al. 2025; OpenRLHF 'reinforce'): KL-shaped token returns, whitened over the batch",
            needs_critic=False,
            min_group_size=1,
            whiten=True,
            baseline=_no_baseline,
        ),
        Estimator(
            "reinforce_baseline",
            "REINFORCE++-baseline (OpenRLHF): score minus the group mean, KL-shaped token returns, whitened",
            needs_critic=False,
            min_group_size=2,
            whiten=True,
            baseline=_group_mean,
        ),
        Estimator(
            "rloo",
            "RLOO (Ahmadian et al. 2024): score minus the mean of the other completions of the prompt",
            needs_critic=False,
            min_group_size=2,
            whiten=False,
            baseline=_rloo,
        ),
        Estimator(
            "grpo",
            "GRPO (Shao et al. 2024): score minus the group mean, divided by the std (scale_rewards)",
            needs_critic=False,
            min_group_size=2,
            whiten=False,
            baseline=_grpo,
        ),
        Estimator(
            "gigpo",
            "GiGPO (Feng et al. 2025): GRPO over episode returns plus, per reply, its discounted return-to-go "
            "against the other replies made to the same observation in the batch (env episodes only)",
            needs_critic=False,
            min_group_size=2,
            whiten=False,
            baseline=_grpo,
            step_groups=True,
        ),
    )
}


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"advantage_estimator must be one of {sorted(ESTIMATORS)}, got {name!r}")
    return ESTIMATORS[name]


def global_std(x: torch.Tensor, reduce: Reduce = _identity) -> torch.Tensor:
    """Sample std of `x` over all processes (one all-reduce of sum, sum of squares and count)."""
    total, total_sq, n = reduce(torch.stack([x.sum(), (x * x).sum(), x.new_tensor(float(x.numel()))]))
    var = (total_sq - total * total / n) / (n - 1).clamp(min=1)
    return var.clamp(min=0).sqrt()


def whiten_tokens(x: torch.Tensor, mask: torch.Tensor, reduce: Reduce = _identity) -> torch.Tensor:
    """(x - mean) / std over every real token of every process, population variance (OpenRLHF's normalisation,
    also used for GAE here); padding comes back as 0."""
    total, total_sq, n = reduce(torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]))
    mean = total / n.clamp(min=1)
    var = (total_sq / n.clamp(min=1) - mean * mean).clamp(min=1e-8)
    return (x - mean) * torch.rsqrt(var) * mask


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each completion (batch,)."""
    return (response_mask.sum(dim=1).long() - 1).clamp(min=0)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """r_t = -beta * kl_t on every real token, plus the sequence score on the last real token (Ziegler et al.
    2019; N+ details). (batch,), (batch, T), (batch, T) -> (batch, T)."""
    rewards = -kl_coef * kl * response_mask
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(response_mask)] += scores
    return rewards


def compute_advantages(
    estimator: str | Estimator,
    scores: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float,
    response_mask: torch.Tensor,
    group_size: int = 1,
    values: torch.Tensor | None = None,
    gamma: float | torch.Tensor = 1.0,
    gae_lambda: float = 0.95,
    whiten: bool | None = None,
    scale_rewards: str = "group",
    reduce: Reduce = _identity,
    token_rewards: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (advantages, returns), both (batch, T), zero on padding.

    scores (batch,), each prompt's `group_size` completions in consecutive rows; kl (batch, T) per-token KL
    estimates, weighted by `kl_coef` into the reward (pass 0 when the KL is in the loss instead). gae: the episode
    terminates at the last real token (nothing follows it); its rewards are the score on the last token, or
    `token_rewards` (batch, T) where given (an episode's per-turn env rewards). gamma: one discount, or one per
    token (batch, T). `whiten` None = the estimator's default. `reduce` sums over processes, so that batch-wide
    statistics (whitening, scale_rewards='batch') cover all ranks.
    """
    est = estimator if isinstance(estimator, Estimator) else get_estimator(estimator)
    mask = response_mask
    done = torch.zeros_like(mask)
    done[torch.arange(len(mask), device=mask.device), last_token_index(mask)] = 1.0
    if est.needs_critic:
        if values is None:
            raise ValueError(f"advantage_estimator={est.name!r} needs critic values")
        if token_rewards is None:
            rewards = per_token_rewards(scores, kl, mask, kl_coef)
        else:
            rewards = token_rewards * mask - kl_coef * kl * mask
        values = values * mask
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
        advantages, returns = F.gae_advantages(rewards, values, next_values, done, done, gamma, gae_lambda)
        advantages, returns = advantages * mask, returns * mask
    else:
        shaped = est.baseline(scores, group_size, scale_rewards, reduce)
        rewards = per_token_rewards(shaped, kl, mask, kl_coef)
        returns = F.discounted_returns(rewards, gamma, done) * mask
        advantages = returns
    if est.whiten if whiten is None else whiten:
        advantages = whiten_tokens(advantages, mask, reduce)
    return advantages, returns


def compute_trajectory_advantages(
    estimator: str | Estimator,
    scores: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float,
    action_mask: torch.Tensor,
    turn_ends: torch.Tensor,
    turn_rewards: torch.Tensor,
    group_size: int = 1,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
    whiten: bool | None = None,
    scale_rewards: str = "group",
    reduce: Reduce = _identity,
    turn_states: torch.Tensor | None = None,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (advantages, returns) for multi-turn episodes, both (batch, T), zero off the action tokens.

    One row is one episode, [reply_1 | obs_1 | reply_2 | ... | reply_K] after its prompt; action_mask is 1 on the
    tokens the policy sampled, turn_ends 1 on the last token of each reply, turn_rewards the env's reward of that
    turn there (0 elsewhere). The convention:
    - only action tokens are time steps: observation tokens are skipped, never bootstrapped through (the value
      after a reply's last token is the critic's value at the next reply's first token);
    - `gamma` discounts between turns (one env step), 1 between the tokens of a reply; lambda as usual;
    - gae: r_t = env reward at each turn's last token - beta * KL_t on every action token; the episode ends at
      its last action token (a truncated episode is not bootstrapped: nothing follows it in the sequence);
    - critic-free estimators: the baseline of the episode return `scores` (groups = group_size episodes of the
      same env seed, consecutive rows) at the last action token, - beta * KL_t, returns-to-go with the same
      discounts, optionally whitened over all action tokens of all ranks;
    - gigpo adds to every token of a reply its step-level advantage (`step_group_advantages` on `turn_states`;
      `gather` concatenates a 1-D tensor over processes, so that its groups span every rank's episodes).
    Implemented by moving each row's action tokens to the front (in order), running the single-turn math with
    per-step discounts, and moving the results back.
    """
    est = estimator if isinstance(estimator, Estimator) else get_estimator(estimator)
    order = torch.argsort(
        (action_mask == 0).to(torch.int8), dim=1, stable=True
    )  # action tokens first, in order
    mask = action_mask.gather(1, order)
    discount = torch.where(turn_ends.gather(1, order) > 0, gamma, 1.0)  # (batch, T): gamma at a turn's end
    advantages, returns = compute_advantages(
        est, scores, kl.gather(1, order) * mask, kl_coef, mask, group_size,
        None if values is None else values.gather(1, order), discount, gae_lambda, whiten, scale_rewards, reduce,
        token_rewards=turn_rewards.gather(1, order),
    )  # fmt: skip
    back = torch.argsort(order, dim=1)  # the inverse permutation
    advantages, returns = advantages.gather(1, back), returns.gather(1, back)
    if est.step_groups:
        if turn_states is None:
            raise ValueError(
                f"advantage_estimator={est.name!r} needs env episodes (the state of every reply)"
            )
        advantages = advantages + step_group_advantages(
            action_mask, turn_ends, turn_rewards, turn_states, gamma, scale_rewards, gather=gather
        )
    return advantages, returns


def step_group_advantages(
    action_mask: torch.Tensor,
    turn_ends: torch.Tensor,
    turn_rewards: torch.Tensor,
    turn_states: torch.Tensor,
    gamma: float = 1.0,
    scale: str = "group",
    eps: float = 1e-4,
    gather: Gather | None = None,
) -> torch.Tensor:
    """GiGPO's step-level advantages (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent
    Training"), (batch, T), on every action token of each reply.

    Rows are episodes as in `compute_trajectory_advantages`. Reply k of an episode has the discounted return-to-go
    G_k = r_k + gamma * G_{k+1} of the env rewards (`turn_rewards` at each reply's last token, `turn_ends`). The
    replies of the whole batch made to the same observation (equal `turn_states` ids) form a step group: a reply's
    advantage is G_k minus its group's mean, divided by the group's sample std + eps (`scale` "group"), the std
    of every G_k of the batch ("batch") or nothing ("none"); a reply alone in its group gets 0. Where a critic
    needs many steps to learn V(state), a task that revisits its states gets this baseline from one batch.
    `gather` (1-D tensor -> every process's, concatenated): the batch is then all ranks' episodes, so splitting
    it over processes changes nothing."""
    ends = turn_ends > 0
    turns = int(ends.sum(1).max()) if ends.any() else 0
    if turns == 0:
        return torch.zeros_like(action_mask, dtype=torch.float32)
    # each row's reply ends, in order (then padding: the positions of later columns, not ends)
    order = torch.argsort((~ends).to(torch.int8), dim=1, stable=True)[:, :turns]
    valid = ends.gather(1, order)  # (batch, turns)
    rewards = turn_rewards.gather(1, order).double() * valid
    returns = F.discounted_returns(rewards, gamma)  # the padding after an episode's last reply holds 0
    states, g = turn_states.gather(1, order)[valid], returns[valid]
    every_states, every_g = (states, g) if gather is None else (gather(states), gather(g))
    groups, member = torch.unique(every_states, return_inverse=True)  # groups sorted
    count = torch.bincount(member, minlength=len(groups)).double()
    mean = every_g.new_zeros(len(groups)).index_add_(0, member, every_g) / count
    mine = torch.searchsorted(groups, states)  # this process's replies' groups
    centred = g - mean[mine]
    if scale == "group":
        spread = (every_g - mean[member]) ** 2
        var = every_g.new_zeros(len(groups)).index_add_(0, member, spread) / (count - 1).clamp(min=1)
        centred = centred / (var.sqrt()[mine] + eps)
    elif scale == "batch":
        centred = centred / (every_g.std() + eps if len(every_g) > 1 else 1.0)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    step = torch.zeros_like(returns)
    step[valid] = centred
    reply = (torch.cumsum(ends.long(), 1) - ends.long()).clamp(max=turns - 1)  # the reply each token is in
    return step.gather(1, reply).float() * action_mask
