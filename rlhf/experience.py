"""From scored samples to the frozen batch the update trains on: `annotate`, then `make_experience`.

    Samples + Scores ─► annotate(...)         ─► Annotations(old_logprobs, ref_logprobs, values)
                     ─► make_experience(...)  ─► Experience (advantages, returns, loss mask; frozen)

`annotate` is the one place that decides where the behaviour policy's log-probs come from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.advantages import Reduce, compute_advantages, get_estimator
from rlhf.config import PPOConfig
from rlhf.kl import kl_penalty
from rlhf.rewards import Scores
from rlhf.rollout import Samples, select_rows

# a no-grad forward over a slice of the samples: (batch, response_len) log-probs or values
Forward = Callable[[Samples], torch.Tensor]


@dataclass(frozen=True)
class Annotations:
    """Per-token tensors (batch, response_len) computed without gradients before the update.

    old_logprobs None means: the update runs exactly once over these samples, so the policy the update starts
    from *is* the behaviour policy, and the update's own first forward gives its log-probs (a pass saved)."""

    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    values: torch.Tensor | None


def _in_microbatches(forward: Forward, samples: Samples, micro_batch_size: int) -> torch.Tensor:
    return torch.cat(
        [
            forward(samples.select(slice(i, i + micro_batch_size)))
            for i in range(0, len(samples), micro_batch_size)
        ]
    )


@torch.no_grad()
def annotate(
    samples: Samples,
    policy: Forward,
    reference: Forward | None,
    critic: Forward | None,
    micro_batch_size: int,
    sampled_logprobs_exact: bool,
    updates_per_rollout: int,
    kl_in_reward: bool,
) -> Annotations:
    """Behaviour log-probs, reference log-probs and old values, `micro_batch_size` rows per forward.

    Where old_logprobs come from: the sampler's own log-probs when it computed them with the same numerics as
    the update's forward (`sampled_logprobs_exact`: fp32; under bf16 autocast the incremental and full-sequence
    passes round differently); else a forward pass of `policy` when they are needed before the update (more
    than one optimizer step per rollout, where the ratio needs them, or a KL penalty in the reward); else None
    (see `Annotations`)."""
    old = samples.sampled_logprobs if sampled_logprobs_exact else None
    if old is None and (updates_per_rollout > 1 or (kl_in_reward and reference is not None)):
        old = _in_microbatches(policy, samples, micro_batch_size)
    ref = _in_microbatches(reference, samples, micro_batch_size) if reference is not None else None
    values = _in_microbatches(critic, samples, micro_batch_size) if critic is not None else None
    return Annotations(old, ref, values)


@dataclass(frozen=True)
class Experience:
    """The frozen batch one update trains on. (batch, prompt_len) query_*, (batch, T) the rest, (batch,) scores.

    loss_mask is response_mask with completions excluded from every loss (mask_truncated_completions) zeroed.
    kl is the per-token KL estimate (old vs reference) when both are known before the update, else None."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    kl: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> Experience:
        return select_rows(self, idx)

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.query_ids, self.query_mask, self.response_ids, self.response_mask


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def make_experience(
    samples: Samples,
    scores: Scores,
    annotations: Annotations,
    args: PPOConfig,
    kl_coef: float,
    reduce: Reduce = _identity,
) -> Experience:
    """Advantages and returns for every token, by the estimator `args.advantage_estimator`.

    kl_coef: the current beta; it weights the per-token KL into the reward unless `args.kl_in_loss` (then the
    update adds it to the loss). `reduce` sums over processes (batch-wide whitening and scaling)."""
    mask = samples.response_mask
    kl = None
    if annotations.old_logprobs is not None and annotations.ref_logprobs is not None:
        kl = kl_penalty(annotations.old_logprobs, annotations.ref_logprobs, args.kl_estimator) * mask
    advantages, returns = compute_advantages(
        get_estimator(args.advantage_estimator),
        scores.total,
        kl if kl is not None else torch.zeros_like(mask),
        0.0 if args.kl_in_loss else kl_coef,
        mask,
        group_size=args.num_generations,
        values=annotations.values,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        whiten=args.whiten_advantages,
        scale_rewards=args.scale_rewards,
        reduce=reduce,
    )
    loss_mask = mask * scores.ended_with_eos[:, None] if args.mask_truncated_completions else mask
    return Experience(
        query_ids=samples.query_ids,
        query_mask=samples.query_mask,
        response_ids=samples.response_ids,
        response_mask=mask,
        loss_mask=loss_mask.to(mask.dtype),
        advantages=advantages,
        returns=returns,
        scores=scores.total,
        old_logprobs=annotations.old_logprobs,
        ref_logprobs=annotations.ref_logprobs,
        old_values=annotations.values,
        kl=kl,
    )
