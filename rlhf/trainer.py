"""PPOTrainer: PPO with a critic, REINFORCE++, RLOO and GRPO on a causal LM, built on accelerate.

One step, top to bottom (`train`), each stage a function of rlhf/ with typed inputs and outputs:
    prompts ─ left-pad ─► Generator.generate        ─► Samples       (rollout.py)
      ─► score(reward_funcs, weights, ...)          ─► Scores        (rewards.py)
      ─► annotate(policy, reference, critic, ...)   ─► Annotations   (experience.py: old / ref log-probs, values)
      ─► make_experience(estimator, ...)            ─► Experience    (experience.py, advantages.py)
      ─► update: for epoch, minibatch, microbatch: sums of per-token losses / the step's denominator → backward
      ─► Generator.sync_weights ─► metrics reduced over ranks ─► KL controller ─► checkpoint
The math is `classic.functional` (the PPO that solves CartPole) and rlhf/losses.py; this file composes it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from classic import functional as F
from classic.runlog import MetricsWriter, explain_full_disk, read_metrics, truncate_metrics
from rlhf import checkpoint as ckpt_io
from rlhf import engines
from rlhf.advantages import get_estimator
from rlhf.card import PLOTS, check_hub_access, model_card, push_folder
from rlhf.config import PPOConfig
from rlhf.experience import Experience, annotate, make_experience
from rlhf.gguf import is_gguf, load_gguf_tokenizer
from rlhf.kl import AdaptiveKLController, FixedKLController, kl_penalty
from rlhf.losses import denominator_share, policy_loss, token_weights
from rlhf.models import (
    build_critic,
    disable_dropout,
    enable_activation_checkpointing,
    ensure_pad_token,
    fuse_activations,
    load_policy,
)
from rlhf.plots import plot_run
from rlhf.rewards import RewardModel, Scores, build_reward_funcs, reward_name, score
from rlhf.rollout import Generator, Samples, ends_with_eos, forward_logprobs, forward_values

RewardFunc = Callable[..., Sequence[float]] | str | PreTrainedModel


class PPOTrainer:
    """`PPOTrainer(model, reward_funcs, args, train_dataset, eval_dataset, processing_class).train()`.

    model: Hub id, local path or causal LM. reward_funcs: one or a list of Python functions
    `f(prompts, completions, **columns) -> list[float]` and/or sequence-classification reward models (id, path
    or model). train_dataset: a `datasets.Dataset` with a `prompt` column (text or chat messages); its other
    columns are passed to the reward functions. eval_dataset: the same, held out, for `evaluate` (every
    `eval_steps` steps). peft_config: train LoRA adapters; the reference model is then
    the same network with adapters disabled.
    """

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs: RewardFunc | list[RewardFunc],
        args: PPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: Any = None,
        value_model: torch.nn.Module | None = None,
        ref_model: PreTrainedModel | None = None,
        reward_processing_classes: PreTrainedTokenizerBase | list | None = None,
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
    ) -> None:
        if isinstance(eval_dataset, PreTrainedTokenizerBase):  # the 5th argument is eval_dataset, as in TRL
            raise TypeError(
                "eval_dataset: got a tokenizer; PPOTrainer's 5th argument is eval_dataset (as in TRL's trainers), "
                "pass the tokenizer as processing_class=..."
            )
        self.args = args = args or PPOConfig()
        # before any work: a fresh run must not land on top of another run's checkpoints and metrics
        ckpt_io.check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
        if args.push_to_hub:
            self.hub_model_id = check_hub_access(args.hub_model_id, args.output_dir)
        # checkpoints carry the id of the run that wrote them (rotation only touches this run's)
        self.run_id = uuid.uuid4().hex[:12]
        # the engine `accelerate launch` asked for (DDP, FSDP2, ZeRO-2/3), also on CPU, or an error
        self.accelerator = acc = engines.make_accelerator(
            args.gradient_accumulation_steps,
            "bf16" if args.bf16 else "no",
            args.report_to or None,
            args.output_dir,
            args.ddp_timeout,
            args.micro_batch_size,
            args.max_grad_norm,
        )
        self.estimator = get_estimator(args.advantage_estimator)
        # a repeated prompt (GRPO / RLOO groups) runs once in the log-prob passes, unless parameters are sharded:
        # there a forward pass is a collective, and ranks whose microbatches repeat prompts differently would run
        # different numbers of them
        self.share_prompts = not engines.shards_parameters(acc)
        # models are built from the same seed on every rank (a fresh critic head, LoRA's A matrices); sampling
        # then draws per rank (below)
        torch.manual_seed(args.seed)

        with engines.whole_models(acc):  # DeepSpeed: load whole models; they are sharded when prepared
            # --- policy, tokenizer, reference ---------------------------------------------------------------
            policy = load_policy(model, args.trust_remote_code, field="model")
            if processing_class is None:
                source = model if isinstance(model, str) else policy.config._name_or_path
                processing_class = (
                    load_gguf_tokenizer(source)
                    if is_gguf(source)
                    else AutoTokenizer.from_pretrained(source, trust_remote_code=args.trust_remote_code)
                )
            self.tokenizer = tokenizer = processing_class
            ensure_pad_token(tokenizer, policy)
            if tokenizer.eos_token_id is None:
                raise ValueError(
                    "processing_class: the tokenizer has no EOS token; completions could never end"
                )
            tokenizer.padding_side = "left"
            disable_dropout(policy)
            if args.fuse_activations:  # before the reference and critic copies are made, so they share it
                fuse_activations(policy)
            if ref_model is None and peft_config is None and self.needs_reference:
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
            self.use_peft = peft_config is not None

            # --- rewards and the critic (only estimators that declare needs_critic get one) -----------------------
            self.reward_funcs = build_reward_funcs(
                reward_funcs,
                tokenizer,
                reward_processing_classes,
                args.trust_remote_code,
                args.fuse_activations,
            )
            self.reward_names = [reward_name(f) for f in self.reward_funcs]
            weights = args.reward_weights or [1.0] * len(self.reward_funcs)
            if len(weights) != len(self.reward_funcs):
                raise ValueError(
                    f"reward_weights has {len(weights)} entries for {len(self.reward_funcs)} reward functions"
                )
            self.reward_weights = torch.tensor(weights, dtype=torch.float32)
            critic = None
            if self.estimator.needs_critic:
                reward_models = [f.model for f in self.reward_funcs if isinstance(f, RewardModel)]
                critic = build_critic(
                    args.critic_init,
                    policy.get_base_model() if self.use_peft else policy,
                    reward_models[0] if reward_models else None,
                    value_model,
                    args.gradient_checkpointing,
                    args.fuse_activations,
                )

        # --- data ----------------------------------------------------------------------------------------
        self._prepare_dataset(train_dataset, policy, eval_dataset)
        # what the model card names: the base model and the data
        self.base_model = model if isinstance(model, str) else (policy.config._name_or_path or None)
        self.dataset_name = getattr(getattr(train_dataset, "info", None), "dataset_name", None)
        if args.metric_for_best_model and args.metric_for_best_model not in self.eval_metric_names:
            raise ValueError(
                f"metric_for_best_model={args.metric_for_best_model!r} is not an eval metric of this run; expected "
                f"one of {self.eval_metric_names}"
            )
        self.best_metric: float | None = None
        self.best_checkpoint: str | None = None  # its directory name in output_dir
        self.loaded_checkpoint: str | None = None  # set by load_best_model: the weights are that checkpoint's

        # --- optimisers, accelerate ---------------------------------------------------------------------
        opt_cls, opt_kwargs = optimizer_cls_and_kwargs or (
            torch.optim.AdamW,
            {"eps": args.adam_eps, "weight_decay": args.weight_decay},
        )
        policy_opt = opt_cls(
            [p for p in policy.parameters() if p.requires_grad], lr=args.learning_rate, **opt_kwargs
        )
        self.schedulers = [self._scheduler(policy_opt)]
        # one model per prepare call (FSDP2 takes one; under DeepSpeed each trained model is its own engine)
        self.policy, self.policy_opt = acc.prepare(policy, policy_opt)
        self.critic = self.critic_opt = None
        if critic is not None:
            critic_opt = opt_cls(critic.parameters(), lr=args.critic_learning_rate, **opt_kwargs)
            self.schedulers.append(self._scheduler(critic_opt))
            self.critic, self.critic_opt = acc.prepare(critic, critic_opt)
        # frozen models last (the critic may start as a copy of a reward model): sharded for inference under
        # FSDP2 / ZeRO-3, whole on each rank otherwise, or on the CPU with ref_offload
        self.ref_model = (
            engines.prepare_frozen(acc, ref_model, args.ref_offload) if ref_model is not None else None
        )
        for func in self.reward_funcs:
            if isinstance(func, RewardModel):
                func.model = engines.prepare_frozen(acc, func.model, args.ref_offload)
        if args.adaptive_kl:
            self.kl_ctl: Any = AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
        else:
            self.kl_ctl = FixedKLController(args.kl_coef)
        self.generator = Generator(
            args.max_new_tokens,
            args.temperature,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            args.top_k,
            args.top_p,
        )
        self.generator.sync_weights(acc.unwrap_model(self.policy))
        self.step = 0
        self.watchdog = engines.Watchdog(acc, args.ddp_timeout)
        # every rank samples different completions (N+ detail: seed + rank * 100003)
        torch.manual_seed(args.seed + acc.process_index * 100003)

    # ------------------------------------------------------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        return self.args.kl_coef > 0 or self.args.adaptive_kl

    def _scheduler(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        total = self.args.max_steps
        if self.args.lr_scheduler == "linear":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def _prepare_dataset(self, dataset: Any, policy: PreTrainedModel, eval_dataset: Any = None) -> None:
        """Tokenize every prompt once, up front, so bad rows fail before any training."""
        args = self.args
        world = self.accelerator.num_processes
        self.prompts, self.columns, self.prompt_ids = self._tokenize_prompts(dataset, "train_dataset")
        if len(self.prompts) < args.rollout_batch_size * world:
            raise ValueError(
                f"train_dataset has {len(self.prompts)} prompts; one step needs rollout_batch_size * "
                f"num_processes = {args.rollout_batch_size * world}"
            )
        max_positions = getattr(policy.config, "max_position_embeddings", None) or getattr(
            policy.config, "n_positions", None
        )
        if max_positions and args.max_prompt_length + args.max_new_tokens > max_positions:
            raise ValueError(
                f"max_prompt_length + max_new_tokens = {args.max_prompt_length + args.max_new_tokens} exceeds the "
                f"model's context window ({max_positions} positions)"
            )
        self.eval_data = None
        if eval_dataset is not None:
            self.eval_data = self._tokenize_prompts(eval_dataset, "eval_dataset")
            if not self.eval_data[0]:
                raise ValueError("eval_dataset: the dataset is empty")
        elif args.eval_steps or args.eval_on_start:
            raise ValueError(
                f"eval_steps={args.eval_steps} / eval_on_start={args.eval_on_start} but no eval_dataset was given "
                "to PPOTrainer"
            )

    def _tokenize_prompts(self, dataset: Any, field: str) -> tuple[list, dict[str, list], list[list[int]]]:
        """(prompts, other columns, token ids) of a dataset with a `prompt` column (text or chat messages)."""
        if dataset is None or not hasattr(dataset, "column_names"):
            raise ValueError(f"{field}: expected a datasets.Dataset with a 'prompt' column")
        if "prompt" not in dataset.column_names:
            raise ValueError(f"{field}: no 'prompt' column (columns are {dataset.column_names})")
        if clash := sorted({"prompts", "completions"} & set(dataset.column_names)):
            raise ValueError(
                f"{field}: column(s) {clash} clash with the reward functions' arguments; rename them"
            )
        prompts = list(dataset["prompt"])
        columns = {c: list(dataset[c]) for c in dataset.column_names if c != "prompt"}
        prompt_ids: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, list):  # chat messages
                if self.tokenizer.chat_template is None:
                    raise ValueError(
                        f"{field} row {i}: chat-message prompt but the tokenizer has no chat template"
                    )
                text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            elif isinstance(prompt, str):
                text = prompt
            else:
                raise TypeError(
                    f"{field} row {i}: 'prompt' must be a string or chat messages, got {prompt!r}"
                )
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"{field} row {i}: empty prompt")
            if len(ids) > self.args.max_prompt_length:
                raise ValueError(
                    f"{field} row {i}: prompt has {len(ids)} tokens, more than max_prompt_length="
                    f"{self.args.max_prompt_length}"
                )
            prompt_ids.append(ids)
        return prompts, columns, prompt_ids

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

    def _reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over all processes (the identity on one)."""
        return self.accelerator.reduce(x, reduction="sum") if self.accelerator.num_processes > 1 else x

    # --- the forward passes the annotate stage runs (no gradients) ------------------------------------------
    def _policy_logprobs(self, samples: Samples) -> torch.Tensor:
        with self.accelerator.autocast():
            return forward_logprobs(
                self.policy, *samples.inputs, self.args.temperature, share_prompts=self.share_prompts
            )[0]

    def _reference_logprobs(self, samples: Samples) -> torch.Tensor:
        with self.accelerator.autocast():
            if self.use_peft:  # LoRA: the reference is the same network with its adapters off
                with self.accelerator.unwrap_model(self.policy).disable_adapter():
                    return forward_logprobs(
                        self.policy, *samples.inputs, self.args.temperature, share_prompts=self.share_prompts
                    )[0]
            device = engines.module_device(self.ref_model)  # the CPU with ref_offload
            inputs = [x.to(device) for x in samples.inputs]
            return forward_logprobs(
                self.ref_model, *inputs, self.args.temperature, share_prompts=self.share_prompts
            )[0].to(self.accelerator.device)

    def _critic_values(self, samples: Samples) -> torch.Tensor:
        with self.accelerator.autocast():
            return forward_values(self.critic, *samples.inputs)

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, indices: list[int]) -> tuple[Experience, dict[str, float]]:
        """generate -> score -> annotate -> make_experience for the dataset rows `indices`: everything the update
        needs, with no gradients. Each stage is a function of rlhf/ that a test can call alone."""
        args = self.args
        # each prompt's num_generations completions are consecutive rows (a group)
        rows = [i for i in indices for _ in range(args.num_generations)]
        # eval mode for generation and scoring: with activation checkpointing on, a model in training mode
        # drops its KV cache (dropout is 0 in both modes, so nothing else changes)
        self._set_training(False)

        t0 = time.perf_counter()
        # under FSDP2 / ZeRO-3 each rank holds the whole policy while it samples: rank-local forward passes, so
        # ranks may generate different numbers of tokens
        with self.accelerator.autocast(), engines.gathered_parameters(self.accelerator, self.policy):
            samples = self.generator.generate(*self._left_pad([self.prompt_ids[i] for i in rows]))

        t1 = time.perf_counter()
        completions = self.tokenizer.batch_decode(samples.response_ids, skip_special_tokens=True)
        prompts = [self.prompts[i] for i in rows]
        scores = score(
            self.reward_funcs,
            self.reward_weights,
            prompts,
            completions,
            {k: [v[i] for i in rows] for k, v in self.columns.items()},
            ends_with_eos(samples.response_ids, samples.response_mask, self.tokenizer.eos_token_id),
            args.missing_eos_penalty,
            prompt_indices=rows,
            timeout=args.reward_timeout,
        )

        # generation and scoring are rank-local: a rank stuck there (a reward function that never returns) would
        # leave the others waiting in the next collective; the check-in names it instead
        self.watchdog.check_in("generate + score")
        t2 = time.perf_counter()
        annotations = annotate(
            samples,
            self._policy_logprobs,
            self._reference_logprobs if self.needs_reference else None,
            self._critic_values if self.critic is not None else None,
            args.micro_batch_size,
            # under bf16 autocast the sampler's incremental passes round differently from the update's
            sampled_logprobs_exact=not args.bf16,
            updates_per_rollout=self._updates_per_rollout,
            kl_in_reward=not args.kl_in_loss,
        )
        experience = make_experience(samples, scores, annotations, args, self.kl_ctl.value, self._reduce_sum)
        t3 = time.perf_counter()

        stats = self._rollout_stats(experience, scores)
        stats.update({"time/generate": t1 - t0, "time/score": t2 - t1, "time/annotate": t3 - t2})
        self._samples = (prompts[:4], completions[:4])
        if args.log_completions or args.print_completions_steps:
            lengths = experience.response_mask.sum(1)
            # one number per completion: the mean of its token advantages (a critic-free estimator without a KL
            # penalty gives every token the same one)
            advantages = (experience.advantages * experience.response_mask).sum(1) / lengths.clamp(min=1)
            self._completion_rows = [
                {
                    "prompt": prompts[i],
                    "completion": completions[i],
                    **{f"reward/{n}": float(scores.raw[j, i]) for j, n in enumerate(self.reward_names)},
                    "reward": float(scores.total[i]),
                    "advantage": float(advantages[i]),
                    "length": int(lengths[i]),
                    "ended_with_eos": bool(scores.ended_with_eos[i]),
                }
                for i in range(len(completions))
            ]
        return experience, stats

    def _rollout_stats(self, exp: Experience, scores: Scores) -> dict[str, float | None]:
        mask, total = exp.response_mask, scores.total
        lengths = mask.sum(1)
        stats: dict[str, float | None] = {
            "reward": total.mean().item(),
            "reward_std": total.std().item() if len(total) > 1 else 0.0,
            "completion_length": lengths.mean().item(),
            "completion_length_min": lengths.min().item(),
            "completion_length_max": lengths.max().item(),
            "eos_fraction": scores.ended_with_eos.float().mean().item(),
            "truncated_fraction": 1.0 - scores.ended_with_eos.float().mean().item(),
            "kl": exp.kl.sum(1).mean().item() if exp.kl is not None else None,
            "generated_tokens": float(lengths.sum().item()),
        }
        for j, name in enumerate(self.reward_names):
            stats[f"reward/{name}"] = scores.raw[j].mean().item()
            stats[f"reward/{name}_std"] = scores.raw[j].std().item() if len(total) > 1 else 0.0
        if self.args.num_generations > 1:  # groups whose completions all scored the same teach nothing
            groups = total.view(-1, self.args.num_generations)
            stats["zero_std_group_fraction"] = (groups.std(dim=1) == 0).float().mean().item()
        if exp.old_values is not None:
            stats["explained_variance"] = F.explained_variance(exp.old_values, exp.returns, mask).item()
        return stats

    # ------------------------------------------------------------------------------------------------------
    @property
    def eval_metric_names(self) -> list[str]:
        """The keys `evaluate` returns (metric_for_best_model must be one of them)."""
        names = ["eval/reward", "eval/reward_std", "eval/completion_length", "eval/eos_fraction"]
        for name in self.reward_names:
            names += [f"eval/reward/{name}", f"eval/reward/{name}_std"]
        return names

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Completions for every eval_dataset prompt (eval_num_generations each; greedy unless eval_temperature > 0)
        scored by every reward function, weight-0 ones included (a gold judge can be watched without training on
        it). Returns the eval/* metrics over all ranks, the same on every rank (time/eval is the rank's own).
        The training run's random stream is untouched (sampling draws from a seed of its own per step), so
        evaluating never changes training."""
        if self.eval_data is None:
            raise ValueError("evaluate: no eval_dataset was given to PPOTrainer")
        args, acc = self.args, self.accelerator
        prompts, columns, prompt_ids = self.eval_data
        rows = [i for i in range(len(prompt_ids)) for _ in range(args.eval_num_generations)]
        # equal shares, the last one padded with repeats that are dropped from the metrics: generation under
        # FSDP2 / ZeRO-3 and sharded reward models are collectives, so every rank runs the same number of passes
        per_rank = -(-len(rows) // acc.num_processes)
        mine = rows[acc.process_index * per_rank : (acc.process_index + 1) * per_rank]
        n_valid = len(mine)
        mine += [rows[-1]] * (per_rank - n_valid)
        t0 = time.perf_counter()
        self._set_training(False)
        generator = copy.copy(self.generator)  # the same engine, at the eval temperature
        generator.temperature = args.eval_temperature
        eos = self.tokenizer.eos_token_id
        completions, lengths, eos_flags = [], [], []
        device_type = acc.device.type if acc.device.type != "cpu" else "cuda"
        devices = [acc.device.index or 0] if acc.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=device_type):
            torch.manual_seed(args.seed + 1_000_003 * (self.step + 1) + acc.process_index)
            with acc.autocast(), engines.gathered_parameters(acc, self.policy):
                for start in range(0, per_rank, args.eval_batch_size):
                    chunk = mine[start : start + args.eval_batch_size]
                    samples = generator.generate(*self._left_pad([prompt_ids[i] for i in chunk]))
                    completions += self.tokenizer.batch_decode(samples.response_ids, skip_special_tokens=True)
                    lengths.append(samples.response_mask.sum(1).float())
                    eos_flags.append(ends_with_eos(samples.response_ids, samples.response_mask, eos))
        lengths, ended = torch.cat(lengths), torch.cat(eos_flags)
        scores = score(
            self.reward_funcs,
            self.reward_weights,
            [prompts[i] for i in mine],
            completions,
            {k: [v[i] for i in mine] for k, v in columns.items()},
            ended,
            args.missing_eos_penalty,
            prompt_indices=mine,
            timeout=args.reward_timeout,
        )
        self.watchdog.check_in("eval generate + score")
        # one row per completion: total, each function's raw score, length, EOS, real (not padding)
        local = torch.stack(
            [
                scores.total.float(),
                *scores.raw.float(),
                lengths,
                ended.float(),
                (torch.arange(per_rank) < n_valid).float(),
            ],
            dim=1,
        ).to(acc.device)
        every = acc.gather(local) if acc.num_processes > 1 else local
        every = every[every[:, -1] == 1].double().cpu()

        def mean_std(col: torch.Tensor) -> tuple[float, float]:
            return col.mean().item(), col.std().item() if len(col) > 1 else 0.0

        metrics = {}
        metrics["eval/reward"], metrics["eval/reward_std"] = mean_std(every[:, 0])
        for j, name in enumerate(self.reward_names):
            metrics[f"eval/reward/{name}"], metrics[f"eval/reward/{name}_std"] = mean_std(every[:, 1 + j])
        metrics["eval/completion_length"] = every[:, -3].mean().item()
        metrics["eval/eos_fraction"] = every[:, -2].mean().item()
        metrics = {k: round(v, 6) for k, v in metrics.items()}
        metrics["time/eval"] = round(time.perf_counter() - t0, 3)
        if args.log_completions:
            logged = [
                {
                    "step": self.step,
                    "prompt": prompts[mine[i]],
                    "completion": completions[i],
                    **{f"reward/{n}": float(scores.raw[j, i]) for j, n in enumerate(self.reward_names)},
                    "reward": float(scores.total[i]),
                    "length": int(lengths[i]),
                    "ended_with_eos": bool(scores.ended_with_eos[i]),
                }
                for i in range(n_valid)
            ]
            logged = gather_object(logged) if acc.num_processes > 1 else logged
            if acc.is_main_process:
                with open(Path(args.output_dir) / "eval_completions.jsonl", "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in logged)
        return metrics

    def _is_new_best(self, row: dict[str, float]) -> bool:
        """Track metric_for_best_model; True when `row` improves on the best so far."""
        key = self.args.metric_for_best_model
        value = row.get(key) if key else None
        if value is None or not math.isfinite(value):
            return False
        if self.best_metric is None or (
            value > self.best_metric if self.args.greater_is_better else value < self.best_metric
        ):
            self.best_metric = value
            self.best_checkpoint = f"{ckpt_io.PREFIX}{self.step}"
            return True
        return False

    @property
    def _updates_per_rollout(self) -> int:
        return self.args.num_ppo_epochs * (self.args.batch_size // self.args.mini_batch_size)

    # ------------------------------------------------------------------------------------------------------
    def update(self, experience: Experience) -> dict[str, float]:
        """PPO epochs over minibatches, each accumulated over microbatches; one optimizer step per minibatch.

        Each microbatch's loss is sum_t weight_t * loss_t / D, with D the denominator of its whole optimizer
        step (all microbatches, all ranks; rlhf.losses), so the gradient does not depend on micro_batch_size
        or on the number of processes. Returns the update's metrics, already reduced over ranks."""
        args, acc = self.args, self.accelerator
        models = [m for m in (self.policy, self.critic) if m is not None]
        # accelerator.backward divides the loss by gradient_accumulation_steps, and DDP / FSDP / DeepSpeed
        # average gradients over ranks: undo both, so that the step's gradient is that of the loss above
        scale = acc.num_processes * args.gradient_accumulation_steps
        sums: dict[str, torch.Tensor] = {}  # summed over ranks at the end
        norms: dict[str, torch.Tensor] = {}  # already the same on every rank
        n_steps = 0
        self._set_training(True)  # transformers checkpoints activations only in training mode
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(len(experience), device=acc.device)
            for mini_idx in order.split(args.mini_batch_size):
                minibatch = experience.select(mini_idx)
                share = denominator_share(minibatch.loss_mask, args.loss_type, args.max_new_tokens)
                denominator = self._reduce_sum(share).clamp(min=1)  # one small all-reduce per optimizer step
                for start in range(0, len(minibatch), args.micro_batch_size):
                    micro = minibatch.select(slice(start, start + args.micro_batch_size))
                    with acc.accumulate(*models), acc.autocast():
                        self._loss_and_backward(micro, denominator, scale, sums)
                    if acc.sync_gradients:
                        for k, v in self._optimizer_step().items():
                            norms[k] = norms.get(k, 0.0) + v
                        n_steps += 1
        for sched in self.schedulers:
            sched.step()
        keys = sorted(sums)
        total = dict(zip(keys, self._reduce_sum(torch.stack([sums[k] for k in keys])).tolist()))
        tokens = max(total.pop("tokens"), 1.0)
        stats = {k: total.pop(k) / n_steps for k in ("policy_loss", "value_loss", "kl_loss") if k in total}
        if "kl_sum" in total:  # the on-policy KL statistic (Annotations: no old_logprobs before the update)
            stats["kl"] = total.pop("kl_sum") / max(total.pop("kl_rows"), 1.0)
        stats.update({k: v / tokens for k, v in total.items()})  # token means
        stats["clip_fraction"] = stats["clip_fraction_low"] + stats["clip_fraction_high"]
        stats.update({k: float(v) / n_steps for k, v in norms.items()})
        return stats

    def _set_training(self, mode: bool) -> None:
        for model in (self.policy, self.critic):
            if model is not None:
                model.train(mode)

    def _loss_and_backward(
        self, micro: Experience, denominator: torch.Tensor, scale: float, sums: dict[str, torch.Tensor]
    ) -> None:
        """Forward, loss and backward of one microbatch; adds its detached statistics to `sums`."""
        args = self.args

        def add(key: str, value: torch.Tensor) -> None:
            sums[key] = sums[key] + value.detach() if key in sums else value.detach().float()

        mask = micro.loss_mask
        weights = token_weights(mask, args.loss_type)  # (micro, T)
        # the entropy is only logged unless it is in the loss: then no graph through the full-vocab softmax
        logprobs, entropy = forward_logprobs(
            self.policy,
            *micro.inputs,
            args.temperature,
            with_entropy=True,
            entropy_grad=args.entropy_coef != 0,
            share_prompts=self.share_prompts,
        )
        # one update per rollout: the current policy *is* the behaviour policy, its log-probs need no extra pass
        old_logprobs = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
        terms = policy_loss(
            logprobs,
            old_logprobs,
            micro.advantages,
            mask,
            args.clip_eps,
            args.clip_eps_high,
            args.importance_sampling_level,
        )
        per_token = terms.loss
        if args.entropy_coef:
            per_token = per_token - args.entropy_coef * entropy
        if micro.ref_logprobs is not None:
            kl = kl_penalty(logprobs, micro.ref_logprobs, args.kl_estimator)
            if args.kl_in_loss:
                per_token = per_token + self.kl_ctl.value * kl
                add("kl_loss", (kl * weights).sum() / denominator)
            if micro.kl is None:
                add("kl_sum", (kl * micro.response_mask).sum())
                add("kl_rows", torch.tensor(float(len(micro)), device=mask.device))
        # policy and critic are separate networks, so backward(policy_loss) + backward(vf_coef * value_loss) gives
        # the gradients of their sum; doing it in two passes frees the policy's graph before the critic's is built
        # (peak memory is the larger graph, not both)
        engines.backward(self.accelerator, self.policy, (per_token * weights).sum() / denominator * scale)
        add("policy_loss", (terms.loss * weights).sum() / denominator)
        add("tokens", mask.sum())
        add("clip_fraction_low", (terms.clipped_low * mask).sum())
        add("clip_fraction_high", (terms.clipped_high * mask).sum())
        add("approx_kl", (terms.approx_kl * mask).sum())
        add("entropy", (entropy * mask).sum())
        if self.critic is not None:
            values = forward_values(self.critic, *micro.inputs)
            error, clipped = F.clipped_value_error(
                values, micro.old_values, micro.returns, args.value_clip_eps
            )
            value_loss = (error * weights).sum() / denominator
            engines.backward(self.accelerator, self.critic, args.vf_coef * value_loss * scale)
            add("value_loss", value_loss)
            add("value_clip_fraction", (clipped * mask).sum())

    def _optimizer_step(self) -> dict[str, torch.Tensor]:
        """Clip, step and zero each trained model; returns their gradient norms (before clipping)."""
        norms = {}
        trained = (
            ("grad_norm", self.policy, self.policy_opt),
            ("critic_grad_norm", self.critic, self.critic_opt),
        )
        for key, model, opt in trained:
            if model is None:
                continue
            norm = engines.optimizer_step(self.accelerator, model, opt, self.args.max_grad_norm)
            if norm is not None:
                if not torch.isfinite(norm):
                    last = ckpt_io.list_checkpoints(self.args.output_dir)
                    raise FloatingPointError(
                        f"non-finite loss/gradient at step {self.step + 1}; training stopped without saving. "
                        f"Last good checkpoint: {last[-1] if last else 'none'}"
                    )
                norms[key] = norm
        return norms

    # ------------------------------------------------------------------------------------------------------
    def train(self) -> list[dict[str, float]]:
        """Run `max_steps` steps (continuing from a checkpoint if asked); returns the per-step metrics."""
        args, acc = self.args, self.accelerator
        out = Path(args.output_dir)
        if args.resume_from_checkpoint:
            self._resume(ckpt_io.resolve_checkpoint(args.resume_from_checkpoint, out))
        elif args.overwrite_output_dir and acc.is_main_process:
            ckpt_io.clear_previous_run(out)
        acc.wait_for_everyone()
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
        if args.eval_on_start and self.step == 0:  # the starting model's numbers, as step 0
            row = {"step": 0, **self.evaluate()}
            if writer is not None:
                writer.write(row)
                if args.report_to:
                    acc.log(row, step=0)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=args.max_steps,
            initial=self.step,
            desc="PPO",
            disable=args.disable_tqdm or not acc.is_main_process,
        )
        while self.step < args.max_steps:
            t_step = time.perf_counter()
            # 1. generate -> score -> annotate -> make_experience (no gradients)
            with self.watchdog.phase("rollout"):
                experience, stats = self.rollout(self._batch_indices(self.step))
            # 2. PPO epochs over the frozen experience
            t0 = time.perf_counter()
            with self.watchdog.phase("update"):
                stats.update(self.update(experience))
            # 3. the generator samples from the updated weights (a no-op in process; an engine copies them)
            self.generator.sync_weights(acc.unwrap_model(self.policy))
            stats["time/update"] = time.perf_counter() - t0
            stats["time/step"] = time.perf_counter() - t_step
            self.step += 1
            # 4. metrics reduced over ranks; the KL controller moves on the all-rank KL, so every rank's beta agrees
            with self.watchdog.phase("metrics"):
                row = self._gather_metrics(stats)
            if row.get("kl") is not None:
                self.kl_ctl.update(row["kl"], args.batch_size * acc.num_processes)
            # 5. evaluation on held-out prompts every eval_steps and after the last step
            new_best = False
            if args.eval_steps and (self.step % args.eval_steps == 0 or self.step == args.max_steps):
                with self.watchdog.phase("eval"):
                    row.update(self.evaluate())
                new_best = self._is_new_best(row)
            history.append(row)
            if writer is not None and self.step % args.logging_steps == 0:
                writer.write(row)
                if args.report_to:
                    acc.log(row, step=self.step)
            self._log_completions(bar)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row.get('kl') or 0:.3f}")
            # 6. checkpoint (a new best at once, so that the best checkpoint always exists)
            if (
                new_best
                or (args.save_steps and self.step % args.save_steps == 0)
                or self.step == args.max_steps
            ):
                with self.watchdog.phase("checkpoint"):
                    self.save_checkpoint()
        bar.close()
        if args.load_best_model_at_end:
            self.load_best_model()
        if writer is not None:
            writer.close()
            if args.plot_metrics and history:
                plot_run(out)
        if args.report_to:
            # flush and close the trackers only: `end_training` would also destroy the process group, which
            # save_model and the caller's own code still need
            for tracker in acc.trackers:
                tracker.finish()
        return history

    def _log_completions(self, bar: Any) -> None:
        """completions.jsonl (every completion of every rank, `log_completions`) and one sample on the console
        every `print_completions_steps` steps."""
        args, acc = self.args, self.accelerator
        if not (args.log_completions or args.print_completions_steps):
            return
        rows = self._completion_rows
        if args.log_completions:
            rows = gather_object(rows) if acc.num_processes > 1 else rows
        if not acc.is_main_process:
            return
        if args.log_completions and self.step % args.logging_steps == 0:
            with open(Path(args.output_dir) / "completions.jsonl", "a") as f:
                for r in rows:
                    f.write(json.dumps({"step": self.step, **r}) + "\n")
            # trackers that take tables (wandb, clearml): the same rows; chat prompts as text
            columns = ["step", *rows[0]]
            table = [
                [self.step, *(v if isinstance(v, int | float | str) else str(v) for v in r.values())]
                for r in rows
            ]
            for tracker in acc.trackers:
                if hasattr(tracker, "log_table"):
                    tracker.log_table("completions", columns=columns, data=table, step=self.step)
        if args.print_completions_steps and self.step % args.print_completions_steps == 0:
            r = rows[0]
            bar.write(
                f"[step {self.step}] reward {r['reward']:.3f} advantage {r['advantage']:+.3f}"
                f"{'' if r['ended_with_eos'] else ' (no EOS)'}\n  prompt: {str(r['prompt'])[:200]!r}"
                f"\n  completion: {r['completion'][:300]!r}"
            )

    def _gather_metrics(self, stats: dict[str, float | None]) -> dict[str, float]:
        """Over ranks: `*_min` the minimum, `*_max` the maximum, `time/*` the slowest rank's (a step lasts as long
        as its slowest rank), the rest the mean (update statistics are already all-rank sums, the same on every
        rank); tokens/s = all ranks' generated tokens over the step time."""
        acc = self.accelerator
        keys = sorted(k for k, v in stats.items() if v is not None)
        local = torch.tensor([[float(stats[k]) for k in keys]], device=acc.device)
        every = acc.gather(local) if acc.num_processes > 1 else local  # (ranks, keys)
        values = [
            every[:, i].min()
            if k.endswith("_min")
            else every[:, i].max()
            if k.endswith("_max") or k.startswith("time/")
            else every[:, i].mean()
            for i, k in enumerate(keys)
        ]
        row = {"step": self.step, **{k: round(float(v), 6) for k, v in zip(keys, values)}}
        row["generated_tokens"] = row["generated_tokens"] * acc.num_processes
        row["tokens_per_s"] = round(row["generated_tokens"] / max(row["time/step"], 1e-9), 2)
        row["kl_coef"] = self.kl_ctl.value
        row["learning_rate"] = self.schedulers[0].get_last_lr()[0]
        return row

    # ------------------------------------------------------------------------------------------------------
    def _checkpoint_parts(self) -> tuple[dict, dict]:
        trained = {"policy": (self.policy, self.policy_opt)}
        schedulers = {"policy": self.schedulers[0]}
        if self.critic is not None:
            trained["critic"] = (self.critic, self.critic_opt)
            schedulers["critic"] = self.schedulers[1]
        return trained, schedulers

    def save_checkpoint(self) -> Path | None:
        trained, schedulers = self._checkpoint_parts()
        state = {
            "step": self.step,
            "run_id": self.run_id,
            "kl_controller": self.kl_ctl.state_dict(),
            "engine": engines.engine_name(self.accelerator),
            "world_size": self.accelerator.num_processes,
            "config": dataclasses.asdict(self.args),
            "best_metric": self.best_metric,
            "best_checkpoint": self.best_checkpoint,
        }
        return ckpt_io.save_checkpoint(
            self.accelerator,
            self.args.output_dir,
            self.step,
            trained,
            schedulers,
            state,
            self.args.save_total_limit,
            keep=self.best_checkpoint,
        )

    def load_best_model(self) -> str | None:
        """The best checkpoint's policy (and critic) weights, optimizer and scheduler states into the trainer, so
        that save_model, evaluate and generate_samples use them; the step count stays that of the last step.
        Returns the checkpoint's name, or None when there is none or the last step is the best."""
        best = self.best_checkpoint
        if best is None or best == f"{ckpt_io.PREFIX}{self.step}":
            return None
        trained, schedulers = self._checkpoint_parts()
        rng = ckpt_io.rng_state()  # the checkpoint's RNG state is for resuming, not for what comes after
        ckpt_io.load_checkpoint(self.accelerator, Path(self.args.output_dir) / best, trained, schedulers)
        ckpt_io.set_rng_state(rng)
        self.generator.sync_weights(self.accelerator.unwrap_model(self.policy))
        self.loaded_checkpoint = best
        return best

    def _resume(self, path: Path) -> None:
        trained, schedulers = self._checkpoint_parts()
        state = ckpt_io.load_checkpoint(self.accelerator, path, trained, schedulers)
        self.step = state["step"]
        self.run_id = state.get("run_id", self.run_id)  # the resumed run keeps its id
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.best_metric, self.best_checkpoint = state.get("best_metric"), state.get("best_checkpoint")
        if self.accelerator.is_main_process:  # drop rows logged after the checkpoint by the interrupted run
            for name in ckpt_io.RUN_LOGS:
                if (Path(self.args.output_dir) / name).is_file():
                    truncate_metrics(Path(self.args.output_dir) / name, self.step)

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """save_pretrained of the policy (the adapter only with LoRA) and the tokenizer, with a full state dict
        under every engine (gathered from the shards under FSDP2 / ZeRO-3), loadable with from_pretrained; the
        critic (gae) goes to `critic/` next to it (`rlhf.models.Critic.load`). A model card (README.md) and the
        run's plots go with it; with push_to_hub the folder is then uploaded to `hub_model_id`."""
        output_dir = Path(output_dir or self.args.output_dir)
        acc = self.accelerator
        acc.wait_for_everyone()
        state = acc.get_state_dict(self.policy)  # a collective under sharded engines: every rank calls it
        critic_state = acc.get_state_dict(self.critic) if self.critic is not None else None
        if acc.is_main_process:
            policy = acc.unwrap_model(self.policy)
            # a gathered state dict holds tied weights (GPT-2's LM head) as separate copies: keep one name each,
            # as save_pretrained does for a model's own state dict
            first: dict[int, str] = {}
            for name, param in policy.named_parameters(remove_duplicate=False):
                first.setdefault(id(param), name)
            tied = {name for name, _ in policy.named_parameters(remove_duplicate=False)} - set(first.values())
            with explain_full_disk(output_dir, written_dir=output_dir):  # no half-written files left
                policy.save_pretrained(
                    output_dir, state_dict={k: v for k, v in state.items() if k not in tied}
                )
                self.tokenizer.save_pretrained(output_dir)
                if critic_state is not None:
                    acc.unwrap_model(self.critic).save(output_dir / "critic", critic_state)
                self._write_card(output_dir)
        acc.wait_for_everyone()
        if self.args.push_to_hub and acc.is_main_process:
            push_folder(output_dir, self.hub_model_id, self.args.hub_private_repo, f"{self.step} steps")

    def _write_card(self, output_dir: Path) -> Path:
        """README.md in `output_dir` from the run's metrics.jsonl, with the plots copied next to it."""
        run_dir = Path(self.args.output_dir)
        rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
        plots = []
        for name in PLOTS:
            if (run_dir / name).is_file():
                if (output_dir / name).resolve() != (run_dir / name).resolve():
                    shutil.copy2(run_dir / name, output_dir / name)
                plots.append(name)
        best = (self.best_checkpoint, self.best_metric) if self.best_checkpoint else None
        text = model_card(
            self.args,
            self.base_model,
            self.reward_names,
            self.reward_weights.tolist(),
            rows,
            self.dataset_name,
            len(self.prompts),
            len(self.eval_data[0]) if self.eval_data else None,
            best,
            plots,
            self.use_peft,
            self.accelerator.num_processes,
            engines.engine_name(self.accelerator),
            model_name=output_dir.resolve().name,
            load_from=self.hub_model_id if self.args.push_to_hub else str(output_dir),
            weights_from=self.loaded_checkpoint,
        )
        (output_dir / "README.md").write_text(text)
        return output_dir / "README.md"

    def generate_samples(self) -> tuple[list, list[str]]:
        """The first prompts and completions of the last rollout (for a quick look)."""
        return getattr(self, "_samples", ([], []))
