"""From scored samples to the frozen batch the update trains on: `annotate`, then `make_experience`.

    Samples + Scores ─► annotate(...)         ─► Annotations(old_logprobs, ref_logprobs, values)
                     ─► make_experience(...)  ─► Experience (advantages, returns, loss mask; frozen)

`annotate` is the one place that decides where the behaviour policy's log-probs come from.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhf.advantages import (
    Estimator,
    Gather,
    Reduce,
    compute_advantages,
    compute_trajectory_advantages,
    get_estimator,
)
from rlhf.batch import Annotations, Experience, Samples, Scores, fold_turns
from rlhf.kl import kl_penalty
from rlhf.rollout import forward_logprobs, forward_values


def _in_microbatches(
    forward: Callable[[Samples], torch.Tensor], samples: Samples, micro_batch_size: int
) -> torch.Tensor:
    return torch.cat(
        [
            forward(samples.select(slice(i, i + micro_batch_size)))
            for i in range(0, len(samples), micro_batch_size)
        ]
    )


def _device(model: torch.nn.Module) -> torch.device | None:
    """Where a model's parameters live (a reference offloaded to the CPU), or None when it has none of its own
    (the LoRA policy with adapters off, `rlhf.models.AdaptersOff`)."""
    params = getattr(model, "parameters", None)
    return next(params(), torch.empty(0)).device if params is not None else None


@torch.no_grad()
def annotate(
    samples: Samples,
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    critic: torch.nn.Module | None,
    *,
    temperature: float,
    micro_batch_size: int,
    sampled_logprobs_exact: bool,
    updates_per_rollout: int,
    kl_in_reward: bool,
    share_prompts: bool = True,
    behaviour_logprobs: bool = False,
) -> Annotations:
    """Behaviour log-probs, reference log-probs and old values, `micro_batch_size` rows per forward.

    Where old_logprobs come from: the sampler's own log-probs when it computed them with the same numerics as
    the update's forward (`sampled_logprobs_exact`: fp32; under bf16 autocast the incremental and full-sequence
    passes round differently); else a forward pass of `policy` when they are needed before the update (more
    than one optimizer step per rollout, where the ratio needs them, or a KL penalty in the reward); else None
    (see `Annotations`). behaviour_logprobs: always the forward pass (samples from a generation engine, whose
    log-probs are compared with the policy's: rlhf/offpolicy.py). A reference whose parameters live elsewhere
    (`ref_offload`: the CPU) gets its inputs there and returns its log-probs on the samples' device."""

    def logprobs(model: torch.nn.Module) -> Callable[[Samples], torch.Tensor]:
        device = _device(model) or samples.response_ids.device

        def forward(s: Samples) -> torch.Tensor:
            inputs = [x.to(device) for x in s.inputs]
            # positions: an episode's replies (None for single-turn completions: every position)
            out = forward_logprobs(
                model, *inputs, temperature, share_prompts=share_prompts, positions=s.action_mask
            )[0]
            return out.to(s.response_ids.device)

        return forward

    old = samples.sampled_logprobs if sampled_logprobs_exact else None
    if old is None and (
        behaviour_logprobs or updates_per_rollout > 1 or (kl_in_reward and reference is not None)
    ):
        old = _in_microbatches(logprobs(policy), samples, micro_batch_size)
    ref = _in_microbatches(logprobs(reference), samples, micro_batch_size) if reference is not None else None
    values = None
    if critic is not None:
        values = _in_microbatches(
            lambda s: forward_values(critic, *s.inputs, share_prompts), samples, micro_batch_size
        )
    return Annotations(old, ref, values)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _episode_advantages(
    est: Estimator,
    samples: Samples,
    scores: Scores,
    kl: torch.Tensor,
    kl_coef: float,
    rows: int,
    common: dict,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """compute_trajectory_advantages on one row per episode (`rows` > 1: the turn rows of a history window folded
    into their episodes, and the results unfolded back)."""
    kl_e, mask_e, ends_e, rewards_e = (
        fold_turns(x, rows) for x in (kl, samples.actions, samples.turn_ends, samples.env_rewards)
    )
    values = common["values"]
    states = None if samples.turn_states is None else fold_turns(samples.turn_states, rows)
    advantages, returns = compute_trajectory_advantages(
        est, scores.total, kl_e, kl_coef, mask_e, ends_e, rewards_e, turn_states=states, gather=gather,
        **{**common, "values": None if values is None else fold_turns(values, rows)},
    )  # fmt: skip
    return advantages.reshape(kl.shape), returns.reshape(kl.shape)


@torch.no_grad()
def make_experience(
    samples: Samples,
    scores: Scores,
    annotations: Annotations,
    estimator: str | Estimator,
    *,
    kl_coef: float,
    kl_estimator: str = "k1",
    group_size: int = 1,
    gamma: float = 1.0,
    gae_lambda: float = 0.95,
    whiten_advantages: bool | None = None,
    scale_rewards: str = "group",
    mask_truncated_completions: bool = False,
    reduce: Reduce = _identity,
    gather: Gather | None = None,
) -> Experience:
    """Advantages and returns for every token, by `estimator` (a name of rlhf.advantages' registry).

    kl_coef: the beta that weights the per-token KL estimate (`kl_estimator`, old vs reference log-probs) into
    the reward; pass 0 when the KL is a loss term instead (`kl_in_loss`); the KL is still computed and kept for
    the metrics. group_size: consecutive rows that share a prompt (num_generations). `reduce` sums over
    processes (batch-wide whitening and scaling; whiten_advantages None: the estimator's default); `gather`
    concatenates a 1-D tensor over processes (gigpo's step groups). mask_truncated_completions: completions that
    never emitted EOS get loss_mask 0 (they train nothing)."""
    mask = samples.actions  # the sampled tokens: the response, or an episode's replies
    kl = None
    if annotations.old_logprobs is not None and annotations.ref_logprobs is not None:
        kl = kl_penalty(annotations.old_logprobs, annotations.ref_logprobs, kl_estimator) * mask
    common = dict(group_size=group_size, values=annotations.values, gamma=gamma, gae_lambda=gae_lambda)
    common.update(whiten=whiten_advantages, scale_rewards=scale_rewards, reduce=reduce)
    est = get_estimator(estimator) if isinstance(estimator, str) else estimator
    kl_or_zero = kl if kl is not None else torch.zeros_like(mask)
    rows = len(samples) // len(scores.total)  # > 1: one row per turn (a history window), see fold_turns
    if samples.action_mask is None:
        advantages, returns = compute_advantages(est, scores.total, kl_or_zero, kl_coef, mask, **common)
    else:  # multi-turn episodes: env rewards per turn, gamma between turns (see the function's docstring)
        advantages, returns = _episode_advantages(
            est, samples, scores, kl_or_zero, kl_coef, rows, common, gather
        )
    ended = scores.ended_with_eos.repeat_interleave(rows)
    loss_mask = mask * ended[:, None] if mask_truncated_completions else mask
    return Experience(
        query_ids=samples.query_ids,
        query_mask=samples.query_mask,
        response_ids=samples.response_ids,
        response_mask=samples.response_mask,  # attended to: the whole dialogue (observations), not only `mask`
        loss_mask=loss_mask.to(mask.dtype),
        advantages=advantages,
        returns=returns,
        scores=scores.total.repeat_interleave(rows),
        old_logprobs=annotations.old_logprobs,
        ref_logprobs=annotations.ref_logprobs,
        old_values=annotations.values,
        kl=kl,
        action_mask=samples.action_mask,
    )
