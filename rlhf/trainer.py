"""PPOTrainer: PPO with a critic, REINFORCE with baseline, RLOO and GRPO on a causal LM, built on accelerate.

One step, top to bottom (`train`):
    prompts ─ left-pad ─► generate ─► completions
      ─► scores = Σ_i weight_i · reward_func_i(prompts, completions, **columns)
      ─► old_logprobs, ref_logprobs, old values (no grad)
      ─► per-token rewards (score at the last token − β·KL_t) ─► advantages, returns
      ─► for epoch, minibatch, microbatch: clipped policy loss + vf_coef · value loss → backward
      ─► metrics, KL controller, checkpoint
The math is `classic.functional` (the PPO that solves CartPole); this file only composes it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from classic import functional as F
from classic.runlog import MetricsWriter, read_metrics
from rlhf import checkpoint as ckpt_io
from rlhf.advantages import compute_advantages
from rlhf.config import PPOConfig
from rlhf.kl import AdaptiveKLController, FixedKLController, kl_penalty
from rlhf.models import (
    Critic,
    disable_dropout,
    enable_activation_checkpointing,
    ensure_pad_token,
    fuse_activations,
    load_policy,
)
from rlhf.rewards import RewardModel, compute_rewards, load_reward_model, reward_name
from rlhf.rollout import Rollout, ends_with_eos, forward_logprobs, forward_values, generate

RewardFunc = Callable[..., Sequence[float]] | str | PreTrainedModel


def _has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


class PPOTrainer:
    """`PPOTrainer(model, reward_funcs, args, train_dataset, processing_class).train()`.

    model: Hub id, local path or causal LM. reward_funcs: one or a list of Python functions
    `f(prompts, completions, **columns) -> list[float]` and/or sequence-classification reward models (id, path
    or model). train_dataset: a `datasets.Dataset` with a `prompt` column (text or chat messages); its other
    columns are passed to the reward functions. peft_config: train LoRA adapters; the reference model is then
    the same network with adapters disabled.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: RewardFunc | list[RewardFunc],
        args: PPOConfig | None = None,
        train_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: Any = None,
        value_model: torch.nn.Module | None = None,
        ref_model: PreTrainedModel | None = None,
        reward_processing_classes: PreTrainedTokenizerBase | list | None = None,
    ) -> None:
        self.args = args = args or PPOConfig()
        self.accelerator = Accelerator(
            # without cpu=True, accelerate treats processes started by `accelerate launch --multi_gpu` on a
            # machine with no accelerator as independent single-process runs (gloo is never used)
            cpu=not _has_accelerator(),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision="bf16" if args.bf16 else "no",
            log_with=args.report_to or None,
            project_dir=args.output_dir,
        )
        # every rank samples different completions (N+ detail: seed + rank * 100003)
        rank = self.accelerator.process_index
        torch.manual_seed(args.seed + rank * 100003)

        # --- policy, tokenizer, reference ---------------------------------------------------------------
        policy = load_policy(model, args.trust_remote_code, field="model")
        if processing_class is None:
            source = model if isinstance(model, str) else policy.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
        self.tokenizer = tokenizer = processing_class
        ensure_pad_token(tokenizer, policy)
        if tokenizer.eos_token_id is None:
            raise ValueError("processing_class: the tokenizer has no EOS token; completions could never end")
        tokenizer.padding_side = "left"
        disable_dropout(policy)
        if args.fuse_activations:  # before the reference and critic copies are made, so they share it
            fuse_activations(policy)
        if ref_model is None and peft_config is None and self.needs_reference:
            import copy

            ref_model = copy.deepcopy(policy)
        if peft_config is not None:
            from peft import get_peft_model

            policy = get_peft_model(policy, peft_config)
            disable_dropout(policy)  # LoRA's own dropout too: the update runs in training mode
        if args.gradient_checkpointing:
            enable_activation_checkpointing(policy)
            if peft_config is not None:
                policy.enable_input_require_grads()
        if ref_model is not None:
            disable_dropout(ref_model)
            if args.fuse_activations:
                fuse_activations(ref_model)
            ref_model = ref_model.eval().requires_grad_(False).to(self.accelerator.device)
        self.ref_model = ref_model
        self.use_peft = peft_config is not None

        # --- rewards -------------------------------------------------------------------------------------
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        if not funcs:
            raise ValueError("reward_funcs: give at least one reward function or reward model")
        rm_tokenizers = reward_processing_classes
        if not isinstance(rm_tokenizers, list):
            rm_tokenizers = [rm_tokenizers] * len(funcs)
        self.reward_funcs: list[Callable] = []
        for i, (func, rm_tok) in enumerate(zip(funcs, rm_tokenizers)):
            if isinstance(func, str | PreTrainedModel):
                rm = load_reward_model(
                    func,
                    rm_tok or (tokenizer if not isinstance(func, str) else None),
                    args.trust_remote_code,
                    field=f"reward_funcs[{i}]",
                )
                rm.model.to(self.accelerator.device)
                disable_dropout(rm.model)
                if args.fuse_activations:
                    fuse_activations(rm.model)
                self.reward_funcs.append(rm)
            elif callable(func):
                self.reward_funcs.append(func)
            else:
                raise TypeError(
                    f"reward_funcs[{i}]: expected a callable, a model id/path or a model, got {func!r}"
                )
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(weights)} entries for {len(self.reward_funcs)} reward functions"
            )
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

        # --- critic (only GAE needs one) ------------------------------------------------------------------
        critic = None
        if args.advantage_estimator == "gae":
            reward_models = [f for f in self.reward_funcs if isinstance(f, RewardModel)]
            init = args.critic_init
            if init == "auto":
                init = "reward_model" if reward_models else "policy"
            if value_model is not None:
                critic = value_model
            elif init == "reward_model":
                if not reward_models:
                    raise ValueError(
                        "critic_init='reward_model' needs a reward model in reward_funcs; use 'policy'"
                    )
                critic = Critic.from_reward_model(reward_models[0].model)
            else:
                base = policy.get_base_model() if self.use_peft else policy
                critic = Critic.from_policy(base)
            disable_dropout(critic)
            if args.gradient_checkpointing:
                enable_activation_checkpointing(critic.backbone)
            if args.fuse_activations:
                fuse_activations(critic)

        # --- data ----------------------------------------------------------------------------------------
        self._prepare_dataset(train_dataset, policy)

        # --- optimisers, accelerate ---------------------------------------------------------------------
        policy_opt = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad],
            lr=args.learning_rate,
            eps=args.adam_eps,
            weight_decay=args.weight_decay,
        )
        self.schedulers = [self._scheduler(policy_opt)]
        if critic is not None:
            critic_opt = torch.optim.AdamW(
                critic.parameters(),
                lr=args.critic_learning_rate,
                eps=args.adam_eps,
                weight_decay=args.weight_decay,
            )
            self.schedulers.append(self._scheduler(critic_opt))
            if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
                # accelerate drives one DeepSpeed engine per Accelerator (its backward goes to the last one)
                raise ValueError(
                    "advantage_estimator='gae' trains a critic next to the policy, and accelerate's DeepSpeed "
                    "integration supports one trained model per Accelerator: use DDP or FSDP for gae, or a "
                    "critic-free estimator (rloo, grpo, reinforce_baseline) with DeepSpeed"
                )
            # one model per prepare call: FSDP2 refuses two models in the same call
            self.policy, self.policy_opt = self.accelerator.prepare(policy, policy_opt)
            self.critic, self.critic_opt = self.accelerator.prepare(critic, critic_opt)
        else:
            self.policy, self.policy_opt = self.accelerator.prepare(policy, policy_opt)
            self.critic = self.critic_opt = None
        if args.adaptive_kl:
            self.kl_ctl: Any = AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(args.kl_coef)
        self.step = 0

    # ------------------------------------------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.args.kl_coef > 0 or self.args.adaptive_kl

    def _scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        total = self.args.max_steps
        if self.args.lr_scheduler == "linear":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def _prepare_dataset(self, dataset: Any, policy: PreTrainedModel) -> None:
        """Tokenize every prompt once, up front, so bad rows fail before any training."""
        args = self.args
        if dataset is None or not hasattr(dataset, "column_names"):
            raise ValueError("train_dataset: expected a datasets.Dataset with a 'prompt' column")
        if "prompt" not in dataset.column_names:
            raise ValueError(f"train_dataset: no 'prompt' column (columns are {dataset.column_names})")
        world = self.accelerator.num_processes
        if len(dataset) < args.rollout_batch_size * world:
            raise ValueError(
                f"train_dataset has {len(dataset)} prompts; one step needs rollout_batch_size * num_processes = "
                f"{args.rollout_batch_size * world}"
            )
        max_positions = getattr(policy.config, "max_position_embeddings", None) or getattr(
            policy.config, "n_positions", None
        )
        if max_positions and args.max_prompt_length + args.max_new_tokens > max_positions:
            raise ValueError(
                f"max_prompt_length + max_new_tokens = {args.max_prompt_length + args.max_new_tokens} exceeds the "
                f"model's context window ({max_positions} positions)"
            )
        self.prompts = list(dataset["prompt"])
        self.columns = {c: list(dataset[c]) for c in dataset.column_names if c != "prompt"}
        self.prompt_ids: list[list[int]] = []
        for i, prompt in enumerate(self.prompts):
            if isinstance(prompt, list):  # chat messages
                if self.tokenizer.chat_template is None:
                    raise ValueError(
                        f"train_dataset row {i}: chat-message prompt but the tokenizer has no chat template"
                    )
                text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            elif isinstance(prompt, str):
                text = prompt
            else:
                raise TypeError(
                    f"train_dataset row {i}: 'prompt' must be a string or chat messages, got {prompt!r}"
                )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"train_dataset row {i}: empty prompt")
            if len(ids) > args.max_prompt_length:
                raise ValueError(
                    f"train_dataset row {i}: prompt has {len(ids)} tokens, more than max_prompt_length="
                    f"{args.max_prompt_length}"
                )
            self.prompt_ids.append(ids)

    def _batch_indices(self, step: int) -> list[int]:
        """Dataset rows for this rank at `step`: a seeded permutation per epoch, so the position in the data is a
        function of the step alone (exact resume)."""
        per_step = self.args.rollout_batch_size * self.accelerator.num_processes
        steps_per_epoch = len(self.prompt_ids) // per_step
        epoch, pos = divmod(step, steps_per_epoch)
        order = torch.randperm(
            len(self.prompt_ids), generator=torch.Generator().manual_seed(self.args.seed + epoch)
        )
        start = pos * per_step + self.accelerator.process_index * self.args.rollout_batch_size
        return order[start : start + self.args.rollout_batch_size].tolist()

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # (batch, prompt_len)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = self.accelerator.device
        return ids.to(device), mask.to(device)

    def _micro_batches(self, n: int) -> list[torch.Tensor]:
        return list(torch.arange(n, device=self.accelerator.device).split(self.args.micro_batch_size))

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, indices: list[int]) -> tuple[Rollout, dict[str, float]]:
        """Generate, score and annotate one batch: everything the update needs, with no gradients."""
        args, acc = self.args, self.accelerator
        timings = {}
        t0 = time.perf_counter()
        # each prompt's num_generations completions are consecutive rows (a group)
        rows = [i for i in indices for _ in range(args.num_generations)]
        query_ids, query_mask = self._left_pad([self.prompt_ids[i] for i in rows])
        # eval mode for generation and scoring: with activation checkpointing on, a model in training mode
        # drops its KV cache (dropout is 0 in both modes, so nothing else changes)
        self._set_training(False)
        policy = acc.unwrap_model(self.policy)
        synced = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        with acc.autocast():
            batch = generate(
                policy,
                query_ids,
                query_mask,
                args.max_new_tokens,
                args.temperature,
                args.top_k,
                args.top_p,
                self.tokenizer.eos_token_id,
                self.tokenizer.pad_token_id,
                synced_gpus=synced,
            )
        timings["time/generate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        completions = self.tokenizer.batch_decode(batch.response_ids, skip_special_tokens=True)
        prompts = [self.prompts[i] for i in rows]
        columns = {k: [v[i] for i in rows] for k, v in self.columns.items()}
        raw = compute_rewards(
            self.reward_funcs, prompts, completions, columns, prompt_indices=rows
        )  # (funcs, B)
        scores = (self.reward_weights[:, None] * raw).sum(0).to(acc.device)  # (batch,)
        eos = ends_with_eos(batch.response_ids, batch.response_mask, self.tokenizer.eos_token_id)
        if args.missing_eos_penalty is not None:
            scores = torch.where(eos, scores, torch.full_like(scores, args.missing_eos_penalty))
        batch.scores = scores

        # the lean sampler returns the sampled tokens' log-probs (same weights, same temperature), which saves a
        # forward pass; under bf16 autocast the incremental and full-sequence passes round differently, so there
        # the behaviour log-probs are recomputed by the same full-sequence pass the update uses
        sampled_logprobs = None if args.bf16 else batch.old_logprobs
        old_logprobs, ref_logprobs, old_values = [], [], []
        need_old = sampled_logprobs is None and (
            self._updates_per_rollout > 1 or (self.needs_reference and not args.kl_in_loss)
        )
        for mb in self._micro_batches(len(batch)):
            micro = batch.select(mb)
            inputs = (micro.query_ids, micro.query_mask, micro.response_ids, micro.response_mask)
            with acc.autocast():
                if need_old:
                    old_logprobs.append(forward_logprobs(self.policy, *inputs, args.temperature)[0])
                if self.needs_reference:
                    if self.use_peft:
                        with acc.unwrap_model(self.policy).disable_adapter():
                            ref_logprobs.append(forward_logprobs(self.policy, *inputs, args.temperature)[0])
                    else:
                        ref_logprobs.append(forward_logprobs(self.ref_model, *inputs, args.temperature)[0])
                if self.critic is not None:
                    old_values.append(forward_values(self.critic, *inputs))
        mask = batch.response_mask
        batch.old_logprobs = torch.cat(old_logprobs) if old_logprobs else sampled_logprobs
        batch.ref_logprobs = torch.cat(ref_logprobs) if ref_logprobs else None
        batch.old_values = torch.cat(old_values) if old_values else None

        # KL in the reward (classic RLHF) needs it per token now; KL-in-loss is computed during the update
        kl = torch.zeros_like(mask)
        if batch.ref_logprobs is not None and batch.old_logprobs is not None:
            kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, args.kl_estimator) * mask
        kl_in_reward = 0.0 if args.kl_in_loss else self.kl_ctl.value
        advantages, returns = compute_advantages(
            args.advantage_estimator,
            scores,
            kl,
            kl_in_reward,
            mask,
            args.num_generations,
            batch.old_values,
            args.gamma,
            args.lam,
        )
        if args.advantage_estimator == "gae" and args.whiten_advantages:
            advantages = self._whiten(advantages, mask)
        batch.advantages, batch.returns = advantages, returns
        timings["time/score"] = time.perf_counter() - t0

        stats = {
            "reward": scores.mean().item(),
            "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
            **{f"reward/{n}": raw[j].mean().item() for j, n in enumerate(self.reward_names)},
            "completion_length": mask.sum(1).float().mean().item(),
            "eos_fraction": eos.float().mean().item(),
            "kl": kl.sum(1).mean().item()
            if batch.ref_logprobs is not None and batch.old_logprobs is not None
            else None,
            "generated_tokens": float(mask.sum().item()),
            **timings,
        }
        if batch.old_values is not None:
            stats["explained_variance"] = F.explained_variance(batch.old_values, returns, mask).item()
        self._samples = (prompts[:4], completions[:4])
        return batch, stats

    def _whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked whitening with mean and variance over *all* ranks' tokens."""
        stats = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()])
        total, total_sq, count = self.accelerator.reduce(stats, reduction="sum")
        mean = total / count
        var = (total_sq / count - mean**2) * count / (count - 1).clamp(min=1)
        return (x - mean) * torch.rsqrt(var + 1e-8) * mask

    @property
    def _updates_per_rollout(self) -> int:
        return self.args.num_ppo_epochs * (self.args.batch_size // self.args.mini_batch_size)

    # ------------------------------------------------------------------------------------------------------
    def update(self, batch: Rollout) -> dict[str, float]:
        """PPO epochs over minibatches, each accumulated over microbatches; one optimizer step per minibatch."""
        args, acc = self.args, self.accelerator
        sums: dict[str, float] = {}
        n_micro = 0
        models = [m for m in (self.policy, self.critic) if m is not None]
        self._set_training(True)  # transformers checkpoints activations only in training mode
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(batch), device=acc.device)
            for mini_idx in order.split(args.mini_batch_size):
                for micro_idx in mini_idx.split(args.micro_batch_size):
                    micro = batch.select(micro_idx)
                    with acc.accumulate(*models), acc.autocast():
                        stats = self._loss_and_backward(micro)
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n_micro += 1
                    if acc.sync_gradients:
                        self._optimizer_step()
        for sched in self.schedulers:
            sched.step()
        return {k: v / n_micro for k, v in sums.items()}

    def _set_training(self, mode: bool) -> None:
        for model in (self.policy, self.critic):
            if model is not None:
                model.train(mode)

    def _loss_and_backward(self, micro: Rollout) -> dict[str, float]:
        args = self.args
        mask = micro.response_mask
        inputs = (micro.query_ids, micro.query_mask, micro.response_ids, micro.response_mask)
        # the entropy is only logged unless it is in the loss: then no graph through the full-vocab softmax
        logprobs, entropy = forward_logprobs(
            self.policy, *inputs, args.temperature, with_entropy=True, entropy_grad=args.entropy_coef != 0
        )
        # one update per rollout: the current policy *is* the behaviour policy, its log-probs need no extra pass
        old_logprobs = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        policy_loss, clip_fraction, approx_kl = F.ppo_policy_loss(
            logprobs, old_logprobs, micro.advantages, args.clip_eps, mask
        )
        entropy_mean = F.masked_mean(entropy, mask)
        loss = policy_loss - args.entropy_coef * entropy_mean if args.entropy_coef else policy_loss
        stats = {
            "policy_loss": policy_loss.item(),
            "clip_fraction": clip_fraction.item(),
            "approx_kl": approx_kl.item(),
            "entropy": entropy_mean.item(),
        }
        if args.kl_in_loss and micro.ref_logprobs is not None:
            kl_loss = F.masked_mean(kl_penalty(logprobs, micro.ref_logprobs, args.kl_estimator), mask)
            loss = loss + self.kl_ctl.value * kl_loss
            stats["kl_loss"] = kl_loss.item()
        # policy and critic are separate networks, so backward(policy_loss) + backward(vf_coef * value_loss) gives
        # the gradients of their sum; doing it in two passes frees the policy's graph before the critic's is built
        # (peak memory is the larger graph, not both)
        self.accelerator.backward(loss)
        if self.critic is not None:
            values = forward_values(self.critic, *inputs)
            v_loss, v_clip = F.value_loss(values, micro.old_values, micro.returns, args.value_clip_eps, mask)
            self.accelerator.backward(args.vf_coef * v_loss)
            stats["value_loss"] = v_loss.item()
            stats["value_clip_fraction"] = v_clip.item()
        return stats

    def _optimizer_step(self) -> None:
        acc = self.accelerator
        pairs = [(self.policy, self.policy_opt), (self.critic, self.critic_opt)]
        for model, opt in pairs:
            if model is None:
                continue
            # the norm is over gradients already averaged across ranks, so every rank sees the same value
            norm = acc.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
            if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                last = ckpt_io.list_checkpoints(self.args.output_dir)
                raise FloatingPointError(
                    f"non-finite loss/gradient at step {self.step + 1}; training stopped without saving. "
                    f"Last good checkpoint: {last[-1] if last else 'none'}"
                )
            opt.step()
            opt.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------------------------
    def train(self) -> list[dict[str, float]]:
        """Run `max_steps` steps (continuing from a checkpoint if asked); returns the per-step metrics."""
        args, acc = self.args, self.accelerator
        out = Path(args.output_dir)
        if args.resume_from_checkpoint:
            self._resume(ckpt_io.resolve_checkpoint(args.resume_from_checkpoint, out))
        writer = None
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            writer = MetricsWriter(out / "metrics.jsonl", append=self.step > 0)
            if args.report_to:
                # trackers take scalars only (TensorBoard's hparams reject lists and None): the rest as text
                config = {
                    k: v if isinstance(v, int | float | str | bool) else str(v)
                    for k, v in dataclasses.asdict(args).items()
                }
                acc.init_trackers("rlhf", config=config)
        history = []
        from tqdm.auto import tqdm

        bar = tqdm(
            total=args.max_steps,
            initial=self.step,
            desc="PPO",
            disable=args.disable_tqdm or not acc.is_main_process,
        )
        while self.step < args.max_steps:
            t_step = time.perf_counter()
            batch, stats = self.rollout(self._batch_indices(self.step))
            t0 = time.perf_counter()
            stats.update(self.update(batch))
            stats["time/update"] = time.perf_counter() - t0
            stats["time/step"] = time.perf_counter() - t_step
            if stats.get("kl") is not None:
                self.kl_ctl.update(stats["kl"], args.batch_size * acc.num_processes)
            self.step += 1
            row = self._gather_metrics(stats)
            history.append(row)
            if writer is not None and self.step % args.logging_steps == 0:
                writer.write(row)
                if args.report_to:
                    acc.log(row, step=self.step)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row.get('kl') or 0:.3f}")
            if (args.save_steps and self.step % args.save_steps == 0) or self.step == args.max_steps:
                self.save_checkpoint()
        bar.close()
        if writer is not None:
            writer.close()
        if args.report_to:
            # flush and close the trackers only: `end_training` would also destroy the process group, which
            # save_model and the caller's own code still need
            for tracker in acc.trackers:
                tracker.finish()
        return history

    def _gather_metrics(self, stats: dict[str, float | None]) -> dict[str, float]:
        """Mean over ranks (tokens/s: sum of generated tokens over the slowest rank's step time)."""
        acc = self.accelerator
        keys = sorted(k for k, v in stats.items() if v is not None)
        local = torch.tensor([float(stats[k]) for k in keys], device=acc.device)
        mean = acc.reduce(local, reduction="mean") if acc.num_processes > 1 else local
        row = {"step": self.step, **{k: round(v, 6) for k, v in zip(keys, mean.tolist())}}
        row["generated_tokens"] = row["generated_tokens"] * acc.num_processes
        row["tokens_per_s"] = round(row["generated_tokens"] / max(row["time/step"], 1e-9), 2)
        row["kl_coef"] = self.kl_ctl.value
        row["lr"] = self.schedulers[0].get_last_lr()[0]
        return row

    # ------------------------------------------------------------------------------------------------------
    def _checkpoint_parts(self) -> tuple[dict, dict]:
        acc = self.accelerator
        models = {"policy": acc.unwrap_model(self.policy)}
        states: dict[str, Any] = {"policy_optimizer": self.policy_opt, "policy_scheduler": self.schedulers[0]}
        if self.critic is not None:
            models["critic"] = acc.unwrap_model(self.critic)
            states.update(critic_optimizer=self.critic_opt, critic_scheduler=self.schedulers[1])
        return models, states

    def save_checkpoint(self) -> Path | None:
        models, states = self._checkpoint_parts()
        state = {
            "step": self.step,
            "kl_controller": self.kl_ctl.state_dict(),
            "config": dataclasses.asdict(self.args),
        }
        return ckpt_io.save_checkpoint(
            self.accelerator,
            self.args.output_dir,
            self.step,
            models,
            states,
            state,
            self.args.save_total_limit,
        )

    def _resume(self, path: Path) -> None:
        models, states = self._checkpoint_parts()
        state = ckpt_io.load_checkpoint(self.accelerator, path, models, states)
        self.step = state["step"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        metrics = Path(self.args.output_dir) / "metrics.jsonl"
        if self.accelerator.is_main_process and metrics.is_file():
            # drop rows logged after the checkpoint by the interrupted run
            kept = [r for r in read_metrics(metrics) if r.get("step", 0) <= self.step]
            writer = MetricsWriter(metrics)
            for r in kept:
                writer.write(r)
            writer.close()

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """save_pretrained of the policy (the adapter only with LoRA) and the tokenizer."""
        output_dir = Path(output_dir or self.args.output_dir)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            policy = self.accelerator.unwrap_model(self.policy)
            policy.save_pretrained(output_dir, state_dict=self.accelerator.get_state_dict(self.policy))
            self.tokenizer.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()

    def generate_samples(self) -> tuple[list, list[str]]:
        """The first prompts and completions of the last rollout (for a quick look)."""
        return getattr(self, "_samples", ([], []))
