"""Pure torch RL math shared by `classic/` and `rlhf/`.

Every function imports only torch, works on tensors whose *last* dimension is time (`(..., T)`), and takes an
optional `mask` so the same code serves a batch of padded token sequences in `rlhf/` (mask = real token) and a
rollout of vectorised environments in `classic/` (no mask; pass `x.T` if your buffer is time-major).

Conventions (Sutton & Barto notation where it exists):
    rewards[..., t]      r_{t+1}, the reward after acting at step t
    values[..., t]       V(s_t)
    next_values[..., t]  V(s_{t+1}) of the *true* next state (the final observation when the episode ended)
    terminated[..., t]   s_{t+1} is terminal: its value is 0, nothing to bootstrap
    dones[..., t]        the episode ended after step t (terminated OR truncated): the recursion stops here
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    if mask is None:
        return x.sum() if dim is None else x.sum(dim)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (all positions if `mask` is None)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    # clamp: a fully masked row gives 0 rather than NaN
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected by default, like `torch.var`)."""
    if mask is None:
        return x.var(unbiased=unbiased)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return torch.zeros_like(var)
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions come back as 0.

    `shift_mean=False` only rescales (used for rewards, where the sign carries meaning)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened if mask is None else whitened * mask


def discounted_returns(
    rewards: torch.Tensor, gamma: float | torch.Tensor, dones: torch.Tensor | None = None
) -> torch.Tensor:
    """G_t = r_{t+1} + gamma * G_{t+1}, restarted after every `done` (S&B eq. 3.9). Shape (..., T).

    gamma: one discount, or one per step (..., T) (gamma_t discounts G_{t+1}: e.g. 1 between the tokens of a
    reply and the env's discount between turns)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        if dones is not None:
            running = running * (1.0 - dones[..., t])
        running = rewards[..., t] + (gamma if isinstance(gamma, float | int) else gamma[..., t]) * running
        returns[..., t] = running
    return returns


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float | torch.Tensor,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016, eq. 16). All inputs (..., T); gamma one discount
    or one per step (gamma_t discounts what follows step t).

    delta_t = r_{t+1} + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}

    Truncation (time limit) bootstraps through `next_values` but still ends the recursion; termination does
    neither. `lam=1` gives Monte-Carlo / n-step returns minus the baseline. Returns (advantages, returns).
    """
    not_terminated = 1.0 - terminated.to(rewards.dtype)
    not_done = 1.0 - dones.to(rewards.dtype)
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        gamma_t = gamma if isinstance(gamma, float | int) else gamma[..., t]
        running = deltas[..., t] + gamma_t * lam * not_done[..., t] * running
        advantages[..., t] = running
    return advantages, advantages + values


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float = 0.2, clip_eps_high: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-element PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated so that it is minimised:
    max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high)). `clip_eps_high` (DAPO's "clip-higher", Yu et
    al. 2025) defaults to `clip_eps`.

    Returns (loss, clipped_low, clipped_high): the boolean masks of the elements where the clipped term is the
    active one (ratio below 1 - eps_low with A < 0, above 1 + eps_high with A > 0); there the gradient is zero.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    with torch.no_grad():
        clipped_low = (ratio < 1.0 - clip_eps) & (advantages < 0)
        clipped_high = (ratio > 1.0 + high) & (advantages > 0)
    return torch.maximum(unclipped, clipped), clipped_low, clipped_high


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    mask: torch.Tensor | None = None,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean of `clipped_surrogate` over the (masked) elements.

    `old_logprobs` must be the behaviour policy's log-probs stored at rollout time (a detached copy of the
    *current* log-probs makes the ratio 1 and clipping never acts). Returns (loss, clip_fraction, approx_kl)
    where approx_kl is the k3 estimator of KL(old || new) (Schulman, "Approximating KL divergence").
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    loss, clipped_low, clipped_high = clipped_surrogate(ratio, advantages, clip_eps, clip_eps_high)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_low | clipped_high).float(), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return masked_mean(loss, mask), clip_fraction, approx_kl


def clipped_value_error(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_eps: float | None = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element 0.5 * (V - R)^2, with the PPO value clipping of the `baselines` implementation when
    `clip_eps` is set: the pessimistic max of the unclipped and the clipped (around `old_values`) error.
    Returns (loss, clipped) with `clipped` the boolean mask of elements where the clipped error is larger."""
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    clipped = (values_clipped - returns) ** 2
    with torch.no_grad():
        clipped_mask = clipped > unclipped
    return 0.5 * torch.maximum(unclipped, clipped), clipped_mask


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    clip_eps: float | None = 0.2,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of `clipped_value_error` over the (masked) elements. Returns (loss, clip_fraction)."""
    loss, clipped = clipped_value_error(values, old_values, returns, clip_eps)
    with torch.no_grad():
        clip_fraction = masked_mean(clipped.float(), mask)
    return masked_mean(loss, mask), clip_fraction


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits) over the last dim. (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] without materialising the full log-softmax twice. (..., V), (...) -> (...)."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - Var[R - V] / Var[R]: 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


# --- Critic-free advantage estimators for sequence-level rewards (one scalar per completion) -------------------
# `scores` is (num_prompts * group_size,) with each prompt's group_size completions contiguous.


def group_mean_baseline_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """r_i minus the mean score of its group (REINFORCE with the group mean as baseline; the first step of
    OpenRLHF's REINFORCE++-baseline, Hu et al. 2025, which then whitens the token returns over the batch)."""
    grouped = scores.view(-1, group_size)
    return (grouped - grouped.mean(dim=1, keepdim=True)).flatten()


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): baseline = mean score of the *other* samples of the
    same prompt, A_i = r_i - (sum_j r_j - r_i) / (k - 1)."""
    if group_size < 2:
        raise ValueError("rloo needs group_size (num_generations) >= 2")
    grouped = scores.view(-1, group_size)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).flatten()


def grpo_advantages(
    scores: torch.Tensor,
    group_size: int,
    scale: str = "group",
    eps: float = 1e-4,
    batch_std: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath): (r - mean_group) / (std + eps).

    scale: "group" divides by the sample std of each group (the paper; TRL's default, eps 1e-4), "batch" by
    the std of all scores of the batch (`batch_std`, default the std of `scores`; pass the all-rank value when
    the batch is split over processes), "none" only centres (Dr. GRPO, Liu et al. 2025)."""
    grouped = scores.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.ones_like(centred)
    elif scale == "batch":
        std = scores.std() if batch_std is None else batch_std
    elif scale == "none":
        return centred.flatten()
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return (centred / (std + eps)).flatten()
