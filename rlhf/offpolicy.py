"""The generation engine's samples are slightly off-policy: how far, and the importance-sampling correction.

A vLLM engine samples completions y ~ pi_engine, with its own kernels and often in bf16, while the update's ratio
starts from the trainer's behaviour log-probs log pi_trainer(y_t). The two differ by rounding (and by a stale
engine, which is a bug: `engine_gap` makes it visible in the logs). Truncated importance sampling (Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training"; TRL's `vllm_importance_sampling_*`,
OpenRLHF's `is_correction_type`, verl's rollout correction) weights each token's policy loss by

    rho_t = pi_trainer(y_t) / pi_engine(y_t)                            token level
    rho   = prod_t pi_trainer(y_t) / pi_engine(y_t)   (every token)     sequence level

    *_truncate:  w = min(rho, cap)        *_mask:  w = rho if rho <= cap else 0

Pure torch, (batch, T) tensors; `mask` is 1 on the sampled tokens (an episode's observations are 0).
"""

from __future__ import annotations

import torch

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def importance_weights(
    old_logprobs: torch.Tensor,
    sampled_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    cap: float,
) -> torch.Tensor:
    """The per-token weight of the policy loss (batch, T), 0 off the mask.

    old_logprobs: the trainer's log pi(y_t) at the sampling temperature; sampled_logprobs: the engine's."""
    if mode not in IS_MODES:
        raise ValueError(f"importance sampling mode must be one of {IS_MODES}, got {mode!r}")
    # where, not a product: padding may hold -inf, and inf * 0 is NaN
    log_ratio = torch.where(mask.bool(), old_logprobs - sampled_logprobs, 0.0)  # (batch, T)
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(dim=1, keepdim=True)  # (batch, 1): log of the product over the completion
    ratio = torch.exp(log_ratio)
    if mode.endswith("truncate"):
        weights = ratio.clamp(max=cap)
    else:
        weights = ratio.masked_fill(ratio > cap, 0.0)
    return weights.expand_as(mask) * mask


def engine_gap(
    old_logprobs: torch.Tensor, sampled_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """How far the engine's log-probs of its own samples are from the trainer's, over the sampled tokens:
    mean and max |log pi_trainer - log pi_engine|, and the k3 estimate of KL(engine || trainer) per token,
    E_engine[r - 1 - log r] with r = pi_trainer / pi_engine (Schulman 2020; >= 0 for every sample)."""
    tokens = mask.sum().clamp(min=1)
    log_r = torch.where(mask.bool(), old_logprobs - sampled_logprobs, 0.0)  # (batch, T)
    diff = log_r.abs()
    k3 = (torch.exp(log_r) - 1.0 - log_r) * mask
    return {
        "vllm/logprob_diff_mean": (diff.sum() / tokens).item(),
        "vllm/logprob_diff_max": diff.max().item() if diff.numel() else 0.0,
        "vllm/kl": (k3.sum() / tokens).item(),
    }


def weight_stats(weights: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The correction's weights over the sampled tokens: mean, min, max, and the fraction set to 0 (masked)."""
    tokens = mask.sum().clamp(min=1)
    on = mask.bool()
    w = weights[on] if on.any() else weights.new_zeros(1)
    return {
        "vllm/is_weight_mean": (weights * mask).sum().item() / tokens.item(),
        "vllm/is_weight_min": w.min().item(),
        "vllm/is_weight_max": w.max().item(),
        "vllm/is_masked_fraction": ((weights == 0) & on).sum().item() / tokens.item(),
    }
