"""From sequence scores and per-token KL to per-token advantages: the one switch between PPO-with-critic,
REINFORCE with baseline, RLOO and GRPO. Pure torch; the math itself lives in `classic.functional`."""

from __future__ import annotations

import torch

from classic import functional as F


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
    estimator: str,
    scores: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float,
    response_mask: torch.Tensor,
    group_size: int,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (advantages, returns), both (batch, T), zero on padding.

    gae: GAE over r_t = -beta * kl_t (+ score at the last token) with the critic's values; the episode
    terminates at the last real token (nothing follows it).
    critic-free: the sequence score is replaced by its group-relative advantage (a prompt's `group_size`
    completions are consecutive rows), the KL rewards stay, and the advantage is the return-to-go.
    """
    mask = response_mask
    done = torch.zeros_like(mask)
    done[torch.arange(len(mask), device=mask.device), last_token_index(mask)] = 1.0
    if estimator == "gae":
        if values is None:
            raise ValueError("advantage_estimator='gae' needs critic values")
        rewards = per_token_rewards(scores, kl, mask, kl_coef)
        values = values * mask
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
        advantages, returns = F.gae_advantages(rewards, values, next_values, done, done, gamma, lam)
        return advantages * mask, returns * mask
    estimators = {
        "rloo": F.rloo_advantages,
        "grpo": F.grpo_advantages,
        "reinforce_baseline": F.reinforce_baseline_advantages,
    }
    if estimator not in estimators:
        raise ValueError(
            f"unknown advantage_estimator {estimator!r}; expected gae or one of {sorted(estimators)}"
        )
    rewards = per_token_rewards(estimators[estimator](scores, group_size), kl, mask, kl_coef)
    returns = F.discounted_returns(rewards, gamma, done) * mask
    return returns, returns
