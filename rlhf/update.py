"""The PPO update: epochs over minibatches of the frozen Experience, each minibatch one optimizer step accumulated
over microbatches.

Each microbatch's loss is sum_t weight_t * loss_t / D, where D is the denominator of its whole optimizer step (all
microbatches, all ranks; rlhf.losses), so the gradient does not depend on micro_batch_size or on the number of
processes. Losses and statistics are sums; the step's metrics are divided once, at the end, over all ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator

from classic import functional as F
from rlhf import engines
from rlhf.batch import Experience
from rlhf.kl import kl_penalty
from rlhf.losses import denominator_share, policy_loss, token_weights
from rlhf.rollout import forward_logprobs, forward_values


@dataclass(frozen=True)
class LossSettings:
    """The loss's hyperparameters (PPOConfig fields of the same names; their help text says what each does)."""

    temperature: float = 1.0
    loss_type: str = "dapo"
    max_new_tokens: int = 64
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    importance_sampling_level: str = "token"
    entropy_coef: float = 0.0
    kl_estimator: str = "k1"
    kl_in_loss: bool = False
    vf_coef: float = 0.1
    value_clip_eps: float = 0.2

    @classmethod
    def from_config(cls, args: Any) -> LossSettings:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


@dataclass
class TrainedModels:
    """The models the update trains, each with its optimizer (the critic only for estimators that use one)."""

    policy: torch.nn.Module
    policy_opt: torch.optim.Optimizer
    critic: torch.nn.Module | None = None
    critic_opt: torch.optim.Optimizer | None = None

    def train(self, mode: bool) -> None:
        """Training mode for the update (transformers checkpoints activations only then), eval mode for sampling
        (with activation checkpointing on, a model in training mode drops its KV cache); dropout is off in both."""
        for model in (self.policy, self.critic):
            if model is not None:
                model.train(mode)


def reduce_sum(accelerator: Accelerator, x: torch.Tensor) -> torch.Tensor:
    """Sum over all processes (the identity on one)."""
    return accelerator.reduce(x, reduction="sum") if accelerator.num_processes > 1 else x


def gather_all(accelerator: Accelerator, x: torch.Tensor) -> torch.Tensor:
    """Every process's 1-D `x` (lengths may differ), concatenated in rank order (the identity on one process)."""
    if accelerator.num_processes == 1:
        return x
    lengths = accelerator.gather(torch.tensor([len(x)], device=x.device)).tolist()
    every = accelerator.gather(accelerator.pad_across_processes(x, dim=0))  # (world * longest,)
    width = max(lengths)
    return torch.cat([every[r * width : r * width + n] for r, n in enumerate(lengths)])


def _add(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    sums[key] = sums[key] + value.detach() if key in sums else value.detach().float()


def loss_and_backward(
    accelerator: Accelerator,
    models: TrainedModels,
    micro: Experience,
    loss: LossSettings,
    kl_coef: float,
    denominator: torch.Tensor,
    scale: float,
    sums: dict[str, torch.Tensor],
    share_prompts: bool = True,
) -> None:
    """Forward, loss and backward of one microbatch; adds its detached statistics (sums) to `sums`.

    denominator: the optimizer step's loss denominator over all microbatches and ranks. scale: undoes
    accelerate's division by the accumulation steps and the engines' mean over ranks."""
    mask = micro.loss_mask
    weights = token_weights(mask, loss.loss_type)  # (micro, T)
    # the entropy is only logged unless it is in the loss: then no graph through the full-vocab softmax
    logprobs, entropy = forward_logprobs(
        models.policy, *micro.inputs, loss.temperature, with_entropy=True,
        entropy_grad=loss.entropy_coef != 0, share_prompts=share_prompts,
        positions=micro.action_mask,  # an episode's replies: no LM head over its observations
    )  # fmt: skip
    # one update per rollout: the current policy *is* the behaviour policy, its log-probs need no extra pass
    old_logprobs = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
    terms = policy_loss(
        logprobs,
        old_logprobs,
        micro.advantages,
        mask,
        loss.clip_eps,
        loss.clip_eps_high,
        loss.importance_sampling_level,
    )
    per_token = terms.loss if micro.is_weights is None else terms.loss * micro.is_weights  # rlhf/offpolicy.py
    if loss.entropy_coef:
        per_token = per_token - loss.entropy_coef * entropy
    if micro.ref_logprobs is not None:
        kl = kl_penalty(logprobs, micro.ref_logprobs, loss.kl_estimator)
        if loss.kl_in_loss:
            per_token = per_token + kl_coef * kl
            _add(sums, "kl_loss", (kl * weights).sum() / denominator)
        if micro.kl is None:
            _add(sums, "kl_sum", (kl * micro.actions).sum())  # action tokens only (episodes)
            _add(sums, "kl_rows", torch.tensor(float(len(micro)), device=mask.device))
    # policy and critic are separate networks, so backward(policy_loss) + backward(vf_coef * value_loss) gives
    # the gradients of their sum; doing it in two passes frees the policy's graph before the critic's is built
    # (peak memory is the larger graph, not both)
    engines.backward(accelerator, models.policy, (per_token * weights).sum() / denominator * scale)
    _add(sums, "policy_loss", (terms.loss * weights).sum() / denominator)
    _add(sums, "tokens", mask.sum())
    _add(sums, "clip_fraction_low", (terms.clipped_low * mask).sum())
    _add(sums, "clip_fraction_high", (terms.clipped_high * mask).sum())
    _add(sums, "approx_kl", (terms.approx_kl * mask).sum())
    _add(sums, "entropy", (entropy * mask).sum())
    if models.critic is not None:
        _value_loss_and_backward(
            accelerator, models.critic, micro, loss, weights, denominator, scale, sums, share_prompts
        )


def _value_loss_and_backward(
    accelerator: Accelerator,
    critic: torch.nn.Module,
    micro: Experience,
    loss: LossSettings,
    weights: torch.Tensor,
    denominator: torch.Tensor,
    scale: float,
    sums: dict[str, torch.Tensor],
    share_prompts: bool = True,
) -> None:
    """The critic's clipped value loss over the same token weights and denominator as the policy's."""
    values = forward_values(critic, *micro.inputs, share_prompts=share_prompts)
    error, clipped = F.clipped_value_error(values, micro.old_values, micro.returns, loss.value_clip_eps)
    value_loss = (error * weights).sum() / denominator
    engines.backward(accelerator, critic, loss.vf_coef * value_loss * scale)
    _add(sums, "value_loss", value_loss)
    _add(sums, "value_clip_fraction", (clipped * micro.loss_mask).sum())


def optimizer_step(
    accelerator: Accelerator, models: TrainedModels, max_grad_norm: float
) -> dict[str, torch.Tensor]:
    """Clip, step and zero each trained model; returns their gradient norms (before clipping). A non-finite norm
    raises FloatingPointError before anything is saved."""
    norms = {}
    trained = (
        ("grad_norm", models.policy, models.policy_opt),
        ("critic_grad_norm", models.critic, models.critic_opt),
    )
    for key, model, opt in trained:
        if model is None:
            continue
        norm = engines.optimizer_step(accelerator, model, opt, max_grad_norm)
        if norm is not None:
            if not torch.isfinite(norm):
                raise FloatingPointError("non-finite loss/gradient")
            norms[key] = norm
    return norms


def ppo_update(
    accelerator: Accelerator,
    models: TrainedModels,
    experience: Experience,
    loss: LossSettings,
    kl_coef: float,
    *,
    num_ppo_epochs: int,
    mini_batch_size: int,
    micro_batch_size: int,
    max_grad_norm: float,
    share_prompts: bool = True,
) -> dict[str, float]:
    """PPO epochs over minibatches (one optimizer step each), each accumulated over microbatches. Returns the
    update's metrics, already reduced over ranks (the same on every rank). The learning-rate schedulers are the
    caller's (one step per update)."""
    acc = accelerator
    trained = [m for m in (models.policy, models.critic) if m is not None]
    # accelerator.backward divides the loss by gradient_accumulation_steps, and DDP / FSDP / DeepSpeed
    # average gradients over ranks: undo both, so that the step's gradient is that of the loss above
    scale = acc.num_processes * acc.gradient_accumulation_steps
    sums: dict[str, torch.Tensor] = {}  # summed over ranks at the end
    norms: dict[str, torch.Tensor] = {}  # already the same on every rank
    n_steps = 0
    models.train(True)
    for _ in range(num_ppo_epochs):
        order = torch.randperm(len(experience), device=acc.device)
        for mini_idx in order.split(mini_batch_size):
            minibatch = experience.select(mini_idx)
            share = denominator_share(minibatch.loss_mask, loss.loss_type, loss.max_new_tokens)
            denominator = reduce_sum(acc, share).clamp(min=1)  # one small all-reduce per optimizer step
            for start in range(0, len(minibatch), micro_batch_size):
                micro = minibatch.select(slice(start, start + micro_batch_size))
                with acc.accumulate(*trained), acc.autocast():
                    loss_and_backward(
                        acc, models, micro, loss, kl_coef, denominator, scale, sums, share_prompts
                    )
                if acc.sync_gradients:
                    for k, v in optimizer_step(acc, models, max_grad_norm).items():
                        norms[k] = norms.get(k, 0.0) + v
                    n_steps += 1
    return _update_stats(acc, sums, norms, n_steps)


def _update_stats(
    accelerator: Accelerator, sums: dict[str, torch.Tensor], norms: dict[str, torch.Tensor], n_steps: int
) -> dict[str, float]:
    """All-rank sums to metrics: losses per optimizer step, token statistics per token, the on-policy KL per
    completion, gradient norms per step."""
    keys = sorted(sums)
    total = dict(zip(keys, reduce_sum(accelerator, torch.stack([sums[k] for k in keys])).tolist()))
    tokens = max(total.pop("tokens"), 1.0)
    stats = {k: total.pop(k) / n_steps for k in ("policy_loss", "value_loss", "kl_loss") if k in total}
    if "kl_sum" in total:  # the on-policy KL statistic (Annotations: no old_logprobs before the update)
        stats["kl"] = total.pop("kl_sum") / max(total.pop("kl_rows"), 1.0)
    stats.update({k: v / tokens for k, v in total.items()})  # token means
    stats["clip_fraction"] = stats["clip_fraction_low"] + stats["clip_fraction_high"]
    stats.update({k: float(v) / n_steps for k, v in norms.items()})
    return stats
