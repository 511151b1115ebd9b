"""PPOTrainer: PPO with a critic, REINFORCE++, RLOO and GRPO on a causal LM, built on accelerate.

One step, top to bottom (`train`), each stage a function of rlhf/ with typed inputs and outputs (rlhf/batch.py):
    rows ─► source.generate: prompts, or env episodes ─► Samples      (sources.py, rollout.py, episodes.py)
      ─► source.score: reward functions, or env rewards ─► Scores     (rewards.py, episodes.py)
      ─► annotate(policy, reference, critic, ...)     ─► Annotations  (experience.py: old / ref log-probs, values)
      ─► make_experience(estimator, ...)              ─► Experience   (experience.py, advantages.py)
      ─► ppo_update: epochs × minibatches × microbatches, sums / the step's denominator   (update.py, losses.py)
      ─► Generator.sync_weights ─► gather_metrics ─► KL controller ─► RunLog ─► evaluate ─► checkpoint
The setup is rlhf/build.py; evaluation rlhf/evaluation.py; saving rlhf/export.py and rlhf/checkpoint.py. The math
is `classic.functional` (the PPO that solves CartPole) and rlhf/losses.py; this file composes it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import build, engines
from rlhf import checkpoint as ckpt_io
from rlhf.advantages import get_estimator
from rlhf.batch import Rollout
from rlhf.config import PPOConfig
from rlhf.episodes import prepare_envs
from rlhf.evaluation import BestTracker, EvalSettings
from rlhf.experience import annotate, make_experience
from rlhf.export import check_hub_access, push_folder, save_model, write_card
from rlhf.models import AdaptersOff
from rlhf.prompts import batch_indices, context_window, prepare_prompts
from rlhf.rewards import RewardModel, RewardSet
from rlhf.runlog import RunLog, gather_metrics, rollout_stats
from rlhf.sources import EnvSource, PromptSource
from rlhf.update import LossSettings, TrainedModels, gather_all, ppo_update, reduce_sum
from rlhf.vllm_engine import make_generator, rollout_correction

RewardFunc = Callable[..., Sequence[float]] | str | PreTrainedModel


class PPOTrainer:
    """`PPOTrainer(model, reward_funcs, args, train_dataset, eval_dataset, processing_class).train()`.

    model: Hub id, local path, GGUF file or causal LM. reward_funcs: one or a list of Python functions
    `f(prompts, completions, **columns) -> list[float]` and/or sequence-classification reward models (id, path
    or model). train_dataset: a `datasets.Dataset` with a `prompt` column (text or chat messages); its other
    columns are passed to the reward functions. eval_dataset: the same, held out, for `evaluate` (every
    `eval_steps` steps). peft_config: train LoRA adapters; the reference model is then the same network with
    adapters disabled.
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
        env_factory: Callable[[], Any] | None = None,
        train_seeds: Sequence[int] | None = None,
        eval_seeds: Sequence[int] | None = None,
        eval_env_factory: Callable[[], Any] | None = None,
    ) -> None:
        if isinstance(eval_dataset, PreTrainedTokenizerBase):  # the 5th argument is eval_dataset, as in TRL
            raise TypeError(
                "eval_dataset: got a tokenizer; PPOTrainer's 5th argument is eval_dataset (as in TRL's trainers), "
                "pass the tokenizer as processing_class=..."
            )
        self.args = args = args or PPOConfig()
        # before any work: a fresh run must not land on top of another run's checkpoints and metrics
        ckpt_io.check_start(args)  # and a checkpoint to resume is one of this advantage estimator
        self.hub_model_id = check_hub_access(args.hub_model_id, args.output_dir) if args.push_to_hub else None
        self.run_id = uuid.uuid4().hex[:12]  # checkpoints carry it: rotation only touches this run's
        # the engine `accelerate launch` asked for (DDP, FSDP2, ZeRO-2/3), also on CPU, or an error
        self.accelerator = acc = engines.make_accelerator(
            args.gradient_accumulation_steps, "bf16" if args.bf16 else "no", args.report_to or None,
            args.output_dir, args.ddp_timeout, args.micro_batch_size, args.max_grad_norm,
        )  # fmt: skip
        self.estimator = get_estimator(args.advantage_estimator)
        # a repeated prompt (GRPO / RLOO groups) runs once in the log-prob passes, unless parameters are sharded:
        # there a forward pass is a collective, and ranks whose microbatches repeat prompts differently would run
        # different numbers of them
        self.share_prompts = not engines.shards_parameters(acc)
        self.use_peft = peft_config is not None
        self.needs_reference = args.kl_coef > 0 or args.adaptive_kl
        self.env_factory, self.eval_env_factory = env_factory, eval_env_factory
        policy, ref_model, critic = self._build_models(
            model, processing_class, peft_config, ref_model, reward_funcs, reward_processing_classes, value_model
        )  # fmt: skip
        self._prepare_data(train_dataset, eval_dataset, policy.config, train_seeds, eval_seeds)
        # what the model card names: the base model and the data
        self.base_model = model if isinstance(model, str) else (policy.config._name_or_path or None)
        self.dataset_name = getattr(getattr(train_dataset, "info", None), "dataset_name", None)
        self._prepare_models(policy, ref_model, critic, optimizer_cls_and_kwargs)
        self.kl_ctl = build.make_kl_controller(args)
        self.loss = LossSettings.from_config(args)
        self.generator = make_generator(args, self.tokenizer, acc, acc.unwrap_model(self.policy))
        self.generator.sync_weights(acc.unwrap_model(self.policy))
        self.step = 0
        self.last_rollout: Rollout | None = None  # the last step's rollout on this rank (generate_samples)
        self.watchdog = engines.Watchdog(acc, args.ddp_timeout)
        # every rank samples different completions (N+ detail: seed + rank * 100003)
        torch.manual_seed(args.seed + acc.process_index * 100003)

    def _build_models(self, model, processing_class, peft_config, ref_model, reward_funcs, reward_processing_classes,
                      value_model) -> tuple[torch.nn.Module, PreTrainedModel | None, torch.nn.Module | None]:  # fmt: skip
        """Policy, tokenizer, reference, rewards and critic, built from the same seed on every rank (a fresh critic
        head, LoRA's A matrices); DeepSpeed: whole models, sharded when prepared."""
        args = self.args
        torch.manual_seed(args.seed)
        with engines.whole_models(self.accelerator):
            policy, ref_model, self.tokenizer = build.build_policy(
                model, processing_class, args, peft_config, ref_model, self.needs_reference
            )
            self.rewards = (
                build.build_rewards(reward_funcs, self.tokenizer, reward_processing_classes, args)
                if self.env_factory is None
                else RewardSet([], ["env"], torch.ones(1))  # the env's rewards are the one source
            )
            critic = None
            if self.estimator.needs_critic:  # only estimators that declare needs_critic get one
                critic = build.build_value_model(args, policy, self.use_peft, self.rewards, value_model)
        return policy, ref_model, critic

    def _prepare_data(self, train_dataset, eval_dataset, model_config, train_seeds, eval_seeds) -> None:  # fmt: skip
        """The source of the samples: every prompt tokenised once, up front, so bad rows fail before any training,
        or the env runs' envs and seeds; the best-model tracker."""
        args, world = self.args, self.accelerator.num_processes
        if self.env_factory is None:
            train, evals = prepare_prompts(
                train_dataset, eval_dataset, self.tokenizer, args, world, model_config
            )
            self.source: Any = PromptSource(train, evals, self.rewards, self.tokenizer)
        else:
            envs, eval_envs, seeds, evals = prepare_envs(self.env_factory, train_seeds, eval_seeds, args, world, self.eval_env_factory)  # fmt: skip
            window = context_window(model_config) or 2**31
            self.source = EnvSource(envs, seeds, evals, self.tokenizer, args.max_turns, window, args.history_turns, eval_envs)  # fmt: skip
        if args.metric_for_best_model and args.metric_for_best_model not in self.source.eval_metric_names:
            raise ValueError(
                f"metric_for_best_model={args.metric_for_best_model!r} is not an eval metric of this run; expected "
                f"one of {self.source.eval_metric_names}"
            )
        self.best = BestTracker(args.metric_for_best_model, args.greater_is_better)
        self.loaded_checkpoint: str | None = None  # set by load_best_model: the weights are that checkpoint's

    def _prepare_models(self, policy, ref_model, critic, optimizer_cls_and_kwargs) -> None:
        """Optimizers, schedulers and accelerate: one model per prepare call (FSDP2 takes one; under DeepSpeed each
        trained model is its own engine), frozen models last (the critic may start as a copy of a reward model):
        sharded for inference under FSDP2 / ZeRO-3, whole on each rank otherwise, or on the CPU with ref_offload."""
        args, acc = self.args, self.accelerator
        policy_opt = build.make_optimizer(policy, args.learning_rate, args, optimizer_cls_and_kwargs)
        self.schedulers = [build.make_scheduler(policy_opt, args.lr_scheduler, args.max_steps)]
        self.policy, self.policy_opt = acc.prepare(policy, policy_opt)
        self.critic = self.critic_opt = None
        if critic is not None:
            critic_opt = build.make_optimizer(
                critic, args.critic_learning_rate, args, optimizer_cls_and_kwargs
            )
            self.schedulers.append(build.make_scheduler(critic_opt, args.lr_scheduler, args.max_steps))
            self.critic, self.critic_opt = acc.prepare(critic, critic_opt)
        self.models = TrainedModels(self.policy, self.policy_opt, self.critic, self.critic_opt)
        self.ref_model = ref_model and engines.prepare_frozen(acc, ref_model, args.ref_offload)
        # what the reference log-probs come from: the reference model, the LoRA policy with adapters off, or none
        peft_reference = self.needs_reference and self.use_peft
        self.reference = (
            AdaptersOff(self.policy, acc.unwrap_model(self.policy)) if peft_reference else self.ref_model
        )
        for func in self.rewards.funcs:
            if isinstance(func, RewardModel):
                func.model = engines.prepare_frozen(acc, func.model, args.ref_offload)

    @property
    def reward_funcs(self) -> list[Callable]:
        return self.rewards.funcs

    def batch_indices(self, step: int) -> list[int]:
        """This rank's dataset rows at `step` (a function of the step alone: exact resume)."""
        acc = self.accelerator
        return batch_indices(
            step, len(self.source), self.args.rollout_batch_size, acc.num_processes, acc.process_index,
            self.args.seed,
        )  # fmt: skip

    @torch.no_grad()
    def rollout(self, indices: list[int]) -> Rollout:
        """generate -> score -> annotate -> make_experience for the dataset rows `indices`: everything the update
        needs, with no gradients."""
        args, acc = self.args, self.accelerator
        rows = [i for i in indices for _ in range(args.num_generations)]  # a prompt's group: consecutive rows
        self.models.train(False)
        t0 = time.perf_counter()
        # under FSDP2 / ZeRO-3 each rank holds the whole policy while it samples: rank-local forward passes, so
        # ranks may generate different numbers of tokens
        with acc.autocast(), engines.gathered_parameters(acc, self.policy):
            generated = self.source.generate(self.generator, rows, acc.device)
        t1 = time.perf_counter()
        batch = self.source.score(generated, rows)  # reward functions, or the env's rewards of each episode
        samples, scores = batch.samples, batch.scores
        # generation and scoring are rank-local: a rank stuck there (a reward function that never returns) would
        # leave the others waiting in the next collective; the check-in names it instead
        self.watchdog.check_in("generate + score")
        t2 = time.perf_counter()
        with acc.autocast():
            annotations = annotate(
                samples, self.policy, self.reference, self.critic,
                temperature=args.temperature,
                micro_batch_size=args.micro_batch_size,
                # under bf16 autocast the sampler's incremental passes round differently from the update's
                sampled_logprobs_exact=not args.bf16 and not args.use_vllm,
                behaviour_logprobs=args.use_vllm,  # an engine's log-probs are compared with the policy's
                updates_per_rollout=args.num_ppo_epochs * (args.batch_size // args.mini_batch_size),
                kl_in_reward=not args.kl_in_loss,
                share_prompts=self.share_prompts,
            )  # fmt: skip
        experience = make_experience(
            samples, scores, annotations, self.estimator,
            kl_coef=0.0 if args.kl_in_loss else self.kl_ctl.value, kl_estimator=args.kl_estimator,
            group_size=args.num_generations, gamma=args.gamma, gae_lambda=args.gae_lambda,
            whiten_advantages=args.whiten_advantages, scale_rewards=args.scale_rewards,
            mask_truncated_completions=args.mask_truncated_completions, reduce=lambda x: reduce_sum(acc, x),
            gather=lambda x: gather_all(acc, x),
        )  # fmt: skip
        experience, engine_stats = rollout_correction(experience, samples, annotations, args)
        stats = rollout_stats(experience, scores, self.rewards.names, args.num_generations)
        stats.update({"time/generate": t1 - t0, "time/score": t2 - t1, "time/annotate": time.perf_counter() - t2})  # fmt: skip
        stats.update({**batch.stats, **engine_stats})
        return Rollout(experience, scores, batch.prompts, batch.completions, stats, batch.extras)

    def update(self, experience: Any) -> dict[str, float]:
        """PPO epochs over the frozen experience (rlhf.update.ppo_update), then one scheduler step. Returns the
        update's metrics, reduced over ranks."""
        args = self.args
        try:
            stats = ppo_update(
                self.accelerator, self.models, experience, self.loss, self.kl_ctl.value,
                num_ppo_epochs=args.num_ppo_epochs,
                mini_batch_size=args.mini_batch_size * args.rows_per_episode,  # history_turns: one row per turn
                micro_batch_size=args.micro_batch_size,
                max_grad_norm=args.max_grad_norm,
                share_prompts=self.share_prompts,
            )  # fmt: skip
        except FloatingPointError as err:
            last = ckpt_io.list_checkpoints(args.output_dir)
            raise FloatingPointError(
                f"{err} at step {self.step + 1}; training stopped without saving. "
                f"Last good checkpoint: {last[-1] if last else 'none'}"
            ) from err
        for sched in self.schedulers:
            sched.step()
        return stats

    def evaluate(self) -> dict[str, float]:
        """eval/* metrics of the current policy on eval_dataset (rlhf.evaluation.evaluate), the same on every rank;
        with log_completions the completions go to eval_completions.jsonl."""
        if self.source.eval_size is None:
            raise ValueError("evaluate: no eval_dataset (or eval_seeds) was given to PPOTrainer")
        args = self.args
        self.models.train(False)
        settings = EvalSettings(
            args.eval_num_generations, args.eval_batch_size, args.eval_temperature, args.seed
        )
        log = Path(args.output_dir) / "eval_completions.jsonl" if args.log_completions else None
        return self.source.evaluate(
            self.accelerator, self.policy, self.generator, settings, self.step, log, self.watchdog
        )

    def train(self) -> list[dict[str, float]]:
        """Run `max_steps` steps (continuing from a checkpoint if asked); returns the per-step metrics."""
        args, acc = self.args, self.accelerator
        if path := ckpt_io.resolve_checkpoint(args.resume_from_checkpoint, args.output_dir, args.overwrite_output_dir):  # fmt: skip
            self._resume(path)  # None: no resume, or 'latest' + overwrite_output_dir with no checkpoint
        elif args.overwrite_output_dir and acc.is_main_process:
            ckpt_io.clear_previous_run(Path(args.output_dir))
        acc.wait_for_everyone()
        log = RunLog(acc, args, initial_step=self.step)
        history = []
        if args.eval_on_start and self.step == 0:  # the starting model's numbers, as step 0
            log.write({"step": 0, **self.evaluate()})
        while self.step < args.max_steps:
            t_step = time.perf_counter()
            # 1. generate -> score -> annotate -> make_experience (no gradients)
            with self.watchdog.phase("rollout"):
                rollout = self.last_rollout = self.rollout(self.batch_indices(self.step))
            # 2. PPO epochs over the frozen experience
            t0 = time.perf_counter()
            with self.watchdog.phase("update"):
                stats = {**rollout.stats, **self.update(rollout.experience)}
            # 3. the generator samples from the updated weights (a no-op in process; an engine copies them)
            self.generator.sync_weights(acc.unwrap_model(self.policy))
            stats["time/update"] = time.perf_counter() - t0
            stats["time/step"] = time.perf_counter() - t_step
            self.step += 1
            # 4. metrics over ranks; the KL controller moves on the all-rank KL, so every rank's beta agrees
            with self.watchdog.phase("metrics"):
                row = gather_metrics(acc, stats, self.step)
            row["kl_coef"], row["learning_rate"] = self.kl_ctl.value, self.schedulers[0].get_last_lr()[0]
            if row.get("kl") is not None:
                self.kl_ctl.update(row["kl"], args.batch_size * acc.num_processes)
            # 5. evaluation on held-out prompts every eval_steps and after the last step
            new_best = False
            if args.eval_steps and (self.step % args.eval_steps == 0 or self.step == args.max_steps):
                with self.watchdog.phase("eval"):
                    row.update(self.evaluate())
                new_best = self.best.update(row, self.step)
            history.append(row)
            log.write(row)
            log.completions(self.step, rollout, self.rewards.names)
            log.progress(row)
            # 6. checkpoint (a new best at once, so that the best checkpoint always exists)
            if new_best or (args.save_steps and self.step % args.save_steps == 0) or self.step == args.max_steps:  # fmt: skip
                with self.watchdog.phase("checkpoint"):
                    self.save_checkpoint()
        log.bar.close()
        if args.load_best_model_at_end:
            self.load_best_model()
        log.close(plot=args.plot_metrics and bool(history))
        return history

    def save_checkpoint(self) -> Path | None:
        """checkpoint-<step>: models, optimizers, schedulers, RNG and the trainer's state (rlhf.checkpoint)."""
        trained, schedulers = ckpt_io.trained_parts(self.models, self.schedulers)
        state = ckpt_io.trainer_state(
            self.step, self.run_id, self.kl_ctl.state_dict(), engines.engine_name(self.accelerator),
            self.accelerator.num_processes, dataclasses.asdict(self.args), self.best.value, self.best.checkpoint,
        )  # fmt: skip
        args = self.args
        return ckpt_io.save_checkpoint(
            self.accelerator, args.output_dir, self.step, trained, schedulers, state, args.save_total_limit,
            keep=self.best.checkpoint,
        )  # fmt: skip

    def load_best_model(self) -> str | None:
        """The best checkpoint's policy (and critic) weights, optimizer and scheduler states into the trainer, so
        that save_model, evaluate and generate_samples use them; the step count stays that of the last step.
        Returns the checkpoint's name, or None when there is none or the last step is the best."""
        best = self.best.existing(self.args.output_dir, self.step, self.accelerator.is_main_process)
        if best is None or best == f"{ckpt_io.PREFIX}{self.step}":
            return None
        trained, schedulers = ckpt_io.trained_parts(self.models, self.schedulers)
        rng = ckpt_io.rng_state()  # the checkpoint's RNG state is for resuming, not for what comes after
        ckpt_io.load_checkpoint(self.accelerator, Path(self.args.output_dir) / best, trained, schedulers)
        ckpt_io.set_rng_state(rng)
        self.generator.sync_weights(self.accelerator.unwrap_model(self.policy))
        self.loaded_checkpoint = best
        return best

    def _resume(self, path: Path) -> None:
        trained, schedulers = ckpt_io.trained_parts(self.models, self.schedulers)
        state = ckpt_io.load_checkpoint(self.accelerator, path, trained, schedulers)
        self.step = state["step"]
        self.run_id = state.get("run_id", self.run_id)  # the resumed run keeps its id
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.best.value, self.best.checkpoint = state.get("best_metric"), state.get("best_checkpoint")
        # the best checkpoint deleted since it was saved: the best of what exists, said in one line
        self.best.existing(self.args.output_dir, self.step, self.accelerator.is_main_process)
        if self.accelerator.is_main_process:  # drop rows logged after the checkpoint by the interrupted run
            ckpt_io.truncate_run_logs(self.args.output_dir, self.step)

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """The policy (the adapter only with LoRA), tokenizer and critic (rlhf.export.save_model), a model card
        (README.md) with the run's plots; with push_to_hub the folder is then uploaded to `hub_model_id`."""
        output_dir = Path(output_dir or self.args.output_dir)
        acc = self.accelerator
        acc.wait_for_everyone()
        save_model(acc, self.policy, self.critic, self.tokenizer, output_dir)
        if acc.is_main_process:
            self.write_card(output_dir)
        acc.wait_for_everyone()
        if self.args.push_to_hub and acc.is_main_process:
            push_folder(output_dir, self.hub_model_id, self.args.hub_private_repo, f"{self.step} steps",
                        self.args.hub_upload_logs)  # fmt: skip

    def write_card(self, output_dir: Path) -> Path:
        """README.md in `output_dir` from the run's metrics.jsonl, with the plots copied next to it."""
        args, acc, best = self.args, self.accelerator, self.best
        return write_card(
            output_dir, Path(args.output_dir), args=args, base_model=self.base_model,
            reward_names=self.rewards.names, reward_weights=self.rewards.weights.tolist(),
            dataset_name=self.dataset_name, dataset_size=len(self.source), eval_size=self.source.eval_size,
            best=(best.checkpoint, best.value) if best.checkpoint else None, peft=self.use_peft,
            world_size=acc.num_processes, engine=engines.engine_name(acc), model_name=output_dir.resolve().name,
            load_from=self.hub_model_id if args.push_to_hub else str(output_dir), weights_from=self.loaded_checkpoint,
        )  # fmt: skip

    def generate_samples(self) -> tuple[list, list[str]]:
        """The first prompts and completions of the last rollout (for a quick look)."""
        if self.last_rollout is None:
            return [], []
        return self.last_rollout.prompts[:4], self.last_rollout.completions[:4]
