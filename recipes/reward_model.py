"""Reward-model training with TRL's RewardTrainer (stage 2 of the TL;DR pipeline: SFT -> reward model -> PPO).

Launch (one GPU; see recipes/accelerate/ for the others), after recipes/tldr_sft.yaml has written runs/tldr_sft:

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/reward_model.py \
        --config recipes/tldr_reward.yaml

The model is the SFT model with a one-label score head (AutoModelForSequenceClassification, num_labels=1), trained
with the Bradley-Terry loss -log σ(r_chosen − r_rejected) on chosen/rejected pairs (an optional `prompt` column is
prepended to both). The result is what rlhf's reward models expect: num_labels=1, pad_token_id set.
Every field can be overridden on the command line (`--max_steps 10 --output_dir runs/try`); `--help` lists them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes.common` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from classic.cli import parse_config_or_exit
from recipes.common import end_distributed, load_dataset_checked, require_columns
from rlhf.hub import load_model_config
from rlhf.models import trainer_checkpointing_arg


@dataclass(kw_only=True)
class RewardRecipeConfig:
    """Reward-model recipe (TRL RewardTrainer, Bradley-Terry loss on preference pairs)."""

    model_name_or_path: str = field(
        metadata={"help": "initial model (usually the SFT model): id or directory"}
    )
    dataset_name: str = field(
        metadata={"help": "Hub id, a save_to_disk directory, or a json/jsonl/csv/parquet file"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "dataset configuration"})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    max_samples: int | None = field(
        default=None, metadata={"help": "use only the first N pairs (None = all)"}
    )
    output_dir: str = field(
        default="runs/reward_model", metadata={"help": "where the model and tokenizer go"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the dataset"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps; -1 = num_train_epochs decides"})
    learning_rate: float = field(default=3e-6, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    warmup_steps: float = field(
        default=0.0, metadata={"help": "linear warmup: steps, or a fraction of all steps if < 1"}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "pairs per device per step"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-steps per optimizer step"})
    max_length: int = field(default=1024, metadata={"help": "pairs with a longer side are dropped"})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "weight of a (r_chosen + r_rejected)^2 term that centres scores"}
    )
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


def main(cfg: RewardRecipeConfig) -> None:
    import torch
    from trl import RewardConfig, RewardTrainer

    # fail fast: the model and the dataset must be found before any weights are loaded
    load_model_config(cfg.model_name_or_path, "model_name_or_path", cfg.trust_remote_code)
    dataset = load_dataset_checked(
        cfg.dataset_name, cfg.dataset_config, cfg.dataset_split, "dataset_name", cfg.max_samples
    )
    require_columns(dataset, ("chosen", "rejected"))

    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            f"model_name_or_path={cfg.model_name_or_path!r}: the tokenizer needs a PAD token distinct from EOS "
            "(the score is read at the last non-PAD token); start from the output of recipes/sft.py, which adds one"
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        cfg.model_name_or_path, num_labels=1, trust_remote_code=cfg.trust_remote_code
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    cuda = torch.cuda.is_available()
    args = RewardConfig(
        output_dir=cfg.output_dir,
        seed=cfg.seed,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        bf16=cfg.bf16,
        **trainer_checkpointing_arg(cfg.gradient_checkpointing),
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        report_to=cfg.report_to,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(cfg.output_dir)
    accelerator = trainer.accelerator
    del trainer
    end_distributed(accelerator)


if __name__ == "__main__":
    main(parse_config_or_exit(RewardRecipeConfig, "recipes/reward_model.py"))
