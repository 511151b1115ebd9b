"""`rlhf train` (= recipes/ppo.py): RL fine-tuning of a causal LM with PPOTrainer from a dataset, a task and a
reward; PPO with a critic, RLOO or GRPO, full or LoRA.

    rlhf train --config recipes/gpt2_imdb_ppo.yaml [--field value ...]
    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/ppo.py --config recipes/gpt2_imdb_ppo.yaml

`PPORecipeConfig` is the trainer's PPOConfig plus the model, dataset, task, reward and LoRA fields.
setup: check that every model and dataset can be found (fail fast) → rows to prompts → drop over-long prompts →
reward functions → PPOTrainer. train: PPOTrainer.train(), then save the policy (the adapter only with LoRA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rlhf import PPOConfig, PPOTrainer
from rlhf.data import build_prompts, drop_long_prompts, load_dataset_checked
from rlhf.engines import end_distributed
from rlhf.hub import load_model_config
from rlhf.task_rewards import REWARD_FUNCTIONS, ClassifierLabelReward


@dataclass(kw_only=True)
class LoraFields:
    """LoRA adapters instead of all weights (peft), for the recipes that train a policy."""

    use_lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(
        default=0.0, metadata={"help": "LoRA dropout (0: log-probs at rollout and update must agree)"}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "modules to adapt; [all-linear] = every linear"},
    )


@dataclass(kw_only=True)
class PPORecipeConfig(LoraFields, PPOConfig):
    """RL fine-tuning recipe: rlhf.PPOConfig plus the model, the prompts, the reward and LoRA."""

    model_name_or_path: str = field(metadata={"help": "policy (and reference): Hub id or local directory"})
    dataset_name: str = field(
        metadata={"help": "Hub id, a save_to_disk directory, or a json/jsonl/csv/parquet file"}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "dataset configuration, e.g. main"})
    dataset_split: str = field(default="train", metadata={"help": "split to take prompts from"})
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N rows (None = all)"})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "split of the same dataset held out for evaluation (with eval_steps), e.g. test"},
    )
    eval_max_samples: int | None = field(
        default=None, metadata={"help": "use only the first N rows of eval_split (None = all)"}
    )
    task: Literal["imdb", "gsm8k", "tldr"] = field(
        metadata={
            "help": "how rows become prompts: imdb (first words of `text`), gsm8k (chat turn from `question`; "
            "`answer` kept for the reward), tldr (the `prompt` column)"
        }
    )
    prompt_words: int = field(default=8, metadata={"help": "imdb: words of the review kept as the prompt"})
    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "sequence classifier used as reward model (Hub id or directory)"}
    )
    reward_label: str | None = field(
        default=None,
        metadata={
            "help": "score = logit of this label (e.g. POSITIVE) of a multi-label classifier; "
            "None = the reward model has num_labels=1"
        },
    )
    reward_functions: list[str] = field(
        default_factory=list,
        metadata={"help": f"Python reward functions by name: {sorted(REWARD_FUNCTIONS)}"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reward_model_name_or_path is None and not self.reward_functions:
            raise ValueError("give a reward: reward_model_name_or_path and/or reward_functions")
        unknown = [f for f in self.reward_functions if f not in REWARD_FUNCTIONS]
        if unknown:
            raise ValueError(f"reward_functions: unknown {unknown}; known are {sorted(REWARD_FUNCTIONS)}")
        if self.reward_label is not None and self.reward_model_name_or_path is None:
            raise ValueError("reward_label needs reward_model_name_or_path")
        for name in ("max_samples", "eval_max_samples"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if (self.eval_steps or self.eval_on_start) and self.eval_split is None:
            raise ValueError("eval_steps / eval_on_start need eval_split (the split to evaluate on)")
        if self.prompt_words <= 0:
            raise ValueError(f"prompt_words must be positive, got {self.prompt_words}")


def load_prompts(cfg: PPORecipeConfig, split: str, max_samples: int | None, split_field: str) -> Any:
    """One split of the dataset as the task's prompts (errors name `dataset_name` and `split_field`)."""
    rows = load_dataset_checked(
        cfg.dataset_name, cfg.dataset_config, split, "dataset_name", max_samples, split_field=split_field
    )
    return build_prompts(cfg.task, rows, cfg.prompt_words)


def drop_long(dataset: Any, tokenizer: PreTrainedTokenizerBase, cfg: PPORecipeConfig, which: str) -> Any:
    """`dataset` without the prompts the trainer would refuse (longer than max_prompt_length); says how many."""
    dataset, dropped = drop_long_prompts(dataset, tokenizer, cfg.max_prompt_length)
    if dropped and int(os.environ.get("RANK", "0")) == 0:
        print(f"dropped {dropped} {which} longer than max_prompt_length={cfg.max_prompt_length} tokens")
    return dataset


def build_rewards(cfg: PPORecipeConfig) -> list:
    """The reward functions by name, then the reward model: a label's logit of a multi-label classifier
    (ClassifierLabelReward), or its path, which the trainer loads as a num_labels=1 RewardModel."""
    rewards: list = [REWARD_FUNCTIONS[name] for name in cfg.reward_functions]
    if cfg.reward_model_name_or_path is not None and cfg.reward_label is not None:
        rewards.append(
            ClassifierLabelReward(
                cfg.reward_model_name_or_path, cfg.reward_label, trust_remote_code=cfg.trust_remote_code
            )
        )
    elif cfg.reward_model_name_or_path is not None:
        rewards.append(cfg.reward_model_name_or_path)
    return rewards


def lora_config(cfg: PPORecipeConfig) -> Any:
    """peft's LoraConfig from the lora_* fields, or None without use_lora."""
    if not cfg.use_lora:
        return None
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )


def run_ppo(cfg: PPORecipeConfig) -> None:
    """Set up, train, save; see the module docstring."""
    # no accelerate state is created before PPOTrainer's Accelerator: it would freeze the distributed setup.
    # 1. fail fast: every model and the dataset must be found before any weights are loaded
    load_model_config(cfg.model_name_or_path, "model_name_or_path", cfg.trust_remote_code)
    if cfg.reward_model_name_or_path is not None:
        load_model_config(cfg.reward_model_name_or_path, "reward_model_name_or_path", cfg.trust_remote_code)
    dataset = load_prompts(cfg, cfg.dataset_split, cfg.max_samples, "dataset_split")
    eval_dataset = None
    if cfg.eval_split is not None:
        eval_dataset = load_prompts(cfg, cfg.eval_split, cfg.eval_max_samples, "eval_split")

    # 2. prompts the trainer would refuse are dropped here, with a count
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code)
    dataset = drop_long(dataset, tokenizer, cfg, "prompts")
    if eval_dataset is not None:
        eval_dataset = drop_long(eval_dataset, tokenizer, cfg, "eval prompts")

    # 3. train and save
    train_and_save(
        PPOTrainer(
            cfg.model_name_or_path,
            build_rewards(cfg),
            args=cfg,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg),
        )
    )


def train_and_save(trainer: PPOTrainer) -> None:
    """Train, save the policy (the adapter only with LoRA) to output_dir, say so, and close the process group;
    the caller keeps no reference, so the models are freed before the group is destroyed."""
    trainer.train()
    trainer.save_model()
    acc = trainer.accelerator
    acc.print(
        f"{trainer.step} steps on {acc.num_processes} process(es); model saved to {trainer.args.output_dir}"
    )
    del trainer
    end_distributed(acc)
