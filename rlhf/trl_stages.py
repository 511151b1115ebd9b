"""`rlhf sft`, `rlhf reward` and `rlhf dpo` (= recipes/sft.py, recipes/reward_model.py, recipes/dpo.py): the
supervised and reward-model stages of an SFT → reward model → PPO pipeline, and DPO in place of the last two, on
TRL's SFTTrainer, RewardTrainer and DPOTrainer.

    rlhf sft    --config recipes/tldr_sft.yaml [--field value ...]
    rlhf reward --config recipes/tldr_reward.yaml [--field value ...]
    rlhf dpo    --config recipes/tldr_dpo.yaml [--field value ...]

Both configs share `TRLStageConfig` (model, dataset, schedule, batch, precision, logging and saving fields); its
`training_args` builds TRL's SFTConfig / RewardConfig through `trl_args`, the one place that knows how this
project sets a TRL stage up (checkpointing keyword, saving, CPU or GPU), also usable by the demo's stages.

SFT: the dataset has prompt/completion columns (loss on the completion only) or a `text` column. The tokenizer gets
a PAD token distinct from EOS before training (rlhf.models.ensure_pad_token: with PAD == EOS the collator would hide
the EOS the model must learn to emit), and is saved with the model, so the reward-model and PPO stages reuse it.

Reward model: the SFT model with a one-label score head (AutoModelForSequenceClassification, num_labels=1), trained
with the Bradley-Terry loss -log σ(r_chosen − r_rejected) on chosen/rejected pairs (an optional `prompt` column is
prepended to both). The result is what rlhf's reward models expect: num_labels=1, pad_token_id set.

DPO (Rafailov et al. 2023): the SFT model trained on the same chosen/rejected pairs with -log σ(β (log-ratio of
chosen − log-ratio of rejected)), each log-ratio log π(y|x) − log π_ref(y|x) against a frozen copy of the starting
model. Without a `prompt` column TRL takes the shared beginning of chosen and rejected as the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf.data import load_dataset_checked, require_columns
from rlhf.engines import end_distributed
from rlhf.hub import load_model_config
from rlhf.models import ensure_pad_token, trainer_checkpointing_arg


def trl_args(
    args_cls: type,
    *,
    output_dir: str | Path,
    gradient_checkpointing: bool = False,
    save_steps: int = 0,
    use_cpu: bool | None = None,
    **fields: Any,
) -> Any:
    """`args_cls` (TRL's SFTConfig or RewardConfig) with what every TRL stage here sets the same way:
    activation checkpointing under the keyword the installed transformers knows (TRL turns it on by default),
    a checkpoint every `save_steps` steps or none (0), and the CPU when there is no GPU (`use_cpu=None`) with
    pinned memory only on a GPU. `fields` are passed on as they are (seed, max_steps, learning_rate, bf16 ...)."""
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    return args_cls(
        output_dir=str(output_dir),
        **trainer_checkpointing_arg(gradient_checkpointing),
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        use_cpu=use_cpu,
        dataloader_pin_memory=not use_cpu,
        **fields,
    )


@dataclass(kw_only=True)
class TRLStageConfig:
    """What the SFT and reward-model stages share. Subclasses set the defaults that differ."""

    model_name_or_path: str = field(metadata={"help": "initial model: Hub id or local directory"})
    dataset_name: str = field(
        metadata={"help": "Hub id, a save_to_disk directory, or a json/jsonl/csv/parquet file"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "dataset configuration"})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N rows (None = all)"})
    output_dir: str = field(metadata={"help": "where the model and tokenizer go"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the dataset"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1 = num_train_epochs decides"})
    learning_rate: float = field(metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    warmup_steps: float = field(
        default=0.0, metadata={"help": "linear warmup: steps, or a fraction of all steps if < 1"}
    )
    per_device_train_batch_size: int = field(metadata={"help": "rows per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_length: int = field(default=1024, metadata={"help": "longest sequence, in tokens"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPU)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory"})
    logging_steps: int = field(default=10, metadata={"help": "log every N steps"})
    save_steps: int = field(
        default=0, metadata={"help": "checkpoint every N steps (0 = only the final model)"}
    )
    report_to: list[str] = field(default_factory=list, metadata={"help": "trackers, e.g. [tensorboard]"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom model code from the Hub"})

    def __post_init__(self) -> None:
        for name in (
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "logging_steps",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be positive or -1, got {self.max_steps}")

    def training_args(self, args_cls: type, **fields: Any) -> Any:
        """`args_cls` (SFTConfig / RewardConfig) from the shared fields, plus the stage's own `fields`."""
        return trl_args(
            args_cls,
            output_dir=self.output_dir,
            gradient_checkpointing=self.gradient_checkpointing,
            save_steps=self.save_steps,
            seed=self.seed,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=self.warmup_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_length=self.max_length,
            bf16=self.bf16,
            logging_steps=self.logging_steps,
            report_to=self.report_to,
            **fields,
        )

    def load_checked(self, columns: tuple[str, ...] = ()) -> Any:
        """Fail fast, before any weights are loaded: the model must be found, and the dataset with `columns`."""
        load_model_config(self.model_name_or_path, "model_name_or_path", self.trust_remote_code)
        dataset = load_dataset_checked(
            self.dataset_name, self.dataset_config, self.dataset_split, "dataset_name", self.max_samples
        )
        require_columns(dataset, columns)
        return dataset


@dataclass(kw_only=True)
class SFTRecipeConfig(TRLStageConfig):
    """Supervised fine-tuning recipe (TRL SFTTrainer)."""

    model_name_or_path: str = field(metadata={"help": "base model: Hub id or local directory"})
    output_dir: str = field(default="runs/sft", metadata={"help": "where the model and tokenizer go"})
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate"})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "sequences per device per step"})
    max_length: int = field(
        default=1024, metadata={"help": "truncate prompt + completion to this many tokens"}
    )


@dataclass(kw_only=True)
class PreferenceStageConfig(TRLStageConfig):
    """What the reward-model and DPO stages share: a dataset of chosen/rejected pairs, counted in pairs."""

    model_name_or_path: str = field(
        metadata={"help": "initial model (usually the SFT model): id or directory"}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "use only the first N pairs (None = all)"}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs per device per step"})


@dataclass(kw_only=True)
class RewardRecipeConfig(PreferenceStageConfig):
    """Reward-model recipe (TRL RewardTrainer, Bradley-Terry loss on preference pairs)."""

    output_dir: str = field(
        default="runs/reward_model", metadata={"help": "where the model and tokenizer go"}
    )
    learning_rate: float = field(default=3e-6, metadata={"help": "peak learning rate"})
    max_length: int = field(default=1024, metadata={"help": "pairs with a longer side are dropped"})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "weight of a (r_chosen + r_rejected)^2 term that centres scores"}
    )


@dataclass(kw_only=True)
class DPORecipeConfig(PreferenceStageConfig):
    """DPO recipe (TRL DPOTrainer on preference pairs; the starting model is also the frozen reference)."""

    output_dir: str = field(default="runs/dpo", metadata={"help": "where the model and tokenizer go"})
    learning_rate: float = field(
        default=1e-6, metadata={"help": "peak learning rate (Rafailov et al.: 1e-6)"}
    )
    max_length: int = field(
        default=1024, metadata={"help": "truncate prompt + completion to this many tokens"}
    )
    beta: float = field(
        default=0.1,
        metadata={
            "help": "β: inverse temperature of the implicit reward; smaller lets the policy move further"
        },
    )
    loss_type: str = field(
        default="sigmoid", metadata={"help": "TRL DPOConfig.loss_type: sigmoid (DPO), ipo, hinge, ..."}
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={"help": "one reference pass over the data first, then no reference in memory"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(
                f"beta must be > 0 (it scales the log-ratios of the implicit reward), got {self.beta}"
            )


def train_and_save(trainer: Any, cfg: TRLStageConfig) -> None:
    """Train, save model + tokenizer to output_dir, then free the trainer before the process group goes (a DDP
    model still alive when the group is destroyed can abort the process at exit)."""
    trainer.train()
    trainer.save_model(cfg.output_dir)
    accelerator = trainer.accelerator
    del trainer
    end_distributed(accelerator)


def run_sft(cfg: SFTRecipeConfig) -> None:
    """Supervised fine-tuning with TRL's SFTTrainer; saves model + tokenizer (with its PAD token) to output_dir."""
    from trl import SFTConfig, SFTTrainer

    dataset = cfg.load_checked()
    if "text" not in dataset.column_names:
        require_columns(dataset, ("prompt", "completion"))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code
    )
    ensure_pad_token(tokenizer, model)
    args = cfg.training_args(SFTConfig)
    # model + tokenizer (with its PAD token)
    train_and_save(SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), cfg)


def run_reward(cfg: RewardRecipeConfig) -> None:
    """Reward-model training with TRL's RewardTrainer; saves model + tokenizer to output_dir."""
    from trl import RewardConfig, RewardTrainer

    dataset = cfg.load_checked(("chosen", "rejected"))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"model_name_or_path={cfg.model_name_or_path!r}: the tokenizer needs a PAD token distinct from EOS "
            "(the score is read at the last non-PAD token); start from the output of `rlhf sft` (recipes/sft.py), "
            "which adds one"
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model_name_or_path, num_labels=1, trust_remote_code=cfg.trust_remote_code
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    args = cfg.training_args(RewardConfig, center_rewards_coefficient=cfg.center_rewards_coefficient)
    train_and_save(
        RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), cfg
    )


def run_dpo(cfg: DPORecipeConfig) -> None:
    """DPO with TRL's DPOTrainer from `model_name_or_path` (also the frozen reference); saves model + tokenizer."""
    from trl import DPOConfig, DPOTrainer

    dataset = cfg.load_checked(("chosen", "rejected"))
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code
    )
    ensure_pad_token(tokenizer, model)
    args = cfg.training_args(
        DPOConfig,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
    )
    train_and_save(DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), cfg)
