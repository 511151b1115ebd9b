"""Per-token losses and how they are normalised, so that an update does not depend on how its batch is split.

Every loss here is per token, (batch, T). The trainer turns it into the optimizer step's scalar as

    loss = sum_t weight_t * loss_t / denominator

where each microbatch contributes its own sum and the denominator is the *whole optimizer step's* total, summed
over its microbatches and over every process before the first backward. Splitting the step into more
microbatches or more ranks then changes nothing but float rounding. `loss_type` picks weights and denominator;
the names are TRL's, after the papers that introduced them:

    dapo     token mean over the step: weight 1, denominator = #tokens (DAPO, Yu et al. 2025; OpenRLHF; TRL's
             default)
    grpo     mean per sequence, then over sequences: weight 1/len_i, denominator = #sequences with a token
             (the GRPO paper's 1/G sum_i 1/|o_i| sum_t, Shao et al. 2024)
    dr_grpo  a constant: weight 1, denominator = #sequences x max_new_tokens (Dr. GRPO, Liu et al. 2025, which
             drops the length normalisation that biases GRPO towards long wrong answers)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from classic import functional as F

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")


def token_weights(loss_mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """(batch, T) weight of each token's loss in the step's sum; 0 on padding and masked-out completions."""
    if loss_type in ("dapo", "dr_grpo"):
        return loss_mask
    if loss_type == "grpo":
        return loss_mask / loss_mask.sum(dim=1, keepdim=True).clamp(min=1)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def denominator_share(loss_mask: torch.Tensor, loss_type: str, max_new_tokens: int) -> torch.Tensor:
    """This batch's part of the step's denominator (a scalar): the step's denominator is the sum of these over
    all its microbatches and processes."""
    if loss_type == "dapo":
        return loss_mask.sum()
    if loss_type == "grpo":
        return (loss_mask.sum(dim=1) > 0).sum().to(loss_mask.dtype)
    if loss_type == "dr_grpo":
        return loss_mask.new_tensor(float(loss_mask.shape[0] * max_new_tokens))
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


@dataclass(frozen=True)
class PolicyTerms:
    """Per-token outputs of `policy_loss`, all (batch, T)."""

    loss: torch.Tensor  # the clipped surrogate, with gradient
    clipped_low: torch.Tensor  # bool: ratio < 1 - clip_eps and A < 0 (no gradient there)
    clipped_high: torch.Tensor  # bool: ratio > 1 + clip_eps_high and A > 0
    approx_kl: torch.Tensor  # k3 estimate of KL(old || new) per token, no gradient


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    importance_sampling_level: str = "token",
) -> PolicyTerms:
    """PPO's clipped surrogate per token.

    importance_sampling_level: "token" uses each token's ratio p/p_old (PPO); "sequence" uses one ratio per
    completion, exp(mean_t log(p/p_old)) over its real tokens, for every token of it (GSPO, Zheng et al. 2025,
    whose length-normalised sequence ratio keeps the clipping range meaningful for long completions)."""
    log_ratio = logprobs - old_logprobs
    if importance_sampling_level == "token":
        ratio = torch.exp(log_ratio)
    elif importance_sampling_level == "sequence":
        mean = (log_ratio * loss_mask).sum(dim=1, keepdim=True) / loss_mask.sum(dim=1, keepdim=True).clamp(
            min=1
        )
        ratio = torch.exp(mean).expand_as(log_ratio)
    else:
        raise ValueError(
            f"importance_sampling_level must be 'token' or 'sequence', got {importance_sampling_level!r}"
        )
    loss, low, high = F.clipped_surrogate(ratio, advantages, clip_eps, clip_eps_high)
    with torch.no_grad():
        approx_kl = torch.exp(log_ratio) - 1.0 - log_ratio
    return PolicyTerms(loss, low, high, approx_kl)
