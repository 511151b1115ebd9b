"""The demo's stages as plain functions: build the tiny model, SFT and reward-model training with TRL, sampling and
scoring for the evaluation. The PPO stage (our trainer) and the orchestration live in `pipeline.py`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
)
from transformers.trainer_callback import PrinterCallback

from classic.runlog import MetricsWriter
from rlhf.gguf import is_gguf, load_gguf, load_gguf_tokenizer
from rlhf.models import ensure_pad_token
from rlhf.rewards import RewardModel
from rlhf.tiny import build_causal_lm, build_tokenizer


class StageBar(TrainerCallback):
    """One tqdm bar per TRL training stage (instead of the Trainer's bar plus a printed dict per log step); the
    logged rows also go to `metrics.jsonl` in the stage directory."""

    def __init__(self, desc: str, metrics_path: Path) -> None:
        self.desc = desc
        self.writer = MetricsWriter(metrics_path)
        self.bar: tqdm | None = None
        self.last_logs: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.desc, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
        if "loss" in logs:
            self.last_logs = logs
            self.writer.write({"step": state.global_step, **logs})
            shown = {k: f"{logs[k]:.3f}" for k in ("loss", "accuracy") if k in logs}
            self.bar.set_postfix(shown)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()
        self.writer.close()


def _quiet(trainer: Any, bar: StageBar) -> None:
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(bar)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """A PAD id (EOS when the tokenizer has none: no token added, no embedding resized), left padding for
    generation, and the ids in the model's generation config so `pipeline("text-generation")` stops at EOS."""
    ensure_pad_token(tokenizer, model)
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id


def build_base_model(
    texts: list[str], base_model: str, vocab_size: int, seed: int, **model_kwargs: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A tiny GPT-2 with a BPE tokenizer trained on `texts`, or `base_model` (Hub id, folder or GGUF file, which
    is de-quantised to fp32 by rlhf.gguf) and its tokenizer."""
    if is_gguf(base_model):
        tokenizer = load_gguf_tokenizer(base_model, field="base_model")
        model = load_gguf(base_model, field="base_model")
    elif base_model:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
        model = AutoModelForCausalLM.from_pretrained(base_model)
    else:
        tokenizer = build_tokenizer(texts, vocab_size=vocab_size)
        model = build_causal_lm(tokenizer, seed=seed, **model_kwargs)
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def trl_config(
    args_cls: type, cfg: Any, output_dir: Path, steps: int, batch_size: int, lr: float, **fields: Any
) -> Any:
    """A TRL stage's config (SFTConfig, RewardConfig) through the recipes' `trl_args`, on the CPU in fp32 (TRL
    defaults to bf16), with the demo's schedule, seeds and no checkpoints (activation checkpointing off: for a tiny
    model it only adds a third forward pass)."""
    from rlhf.trl_stages import trl_args

    return trl_args(
        args_cls,
        output_dir=output_dir,
        use_cpu=True,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        logging_steps=max(1, steps // 50),
        report_to=[],
        bf16=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **fields,
    )


def train_sft(
    cfg: Any, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], out: Path
) -> float:
    """Supervised fine-tuning on the review corpus with TRL's SFTTrainer; saves model + tokenizer to `out`.
    Returns the final training loss."""
    from trl import SFTConfig, SFTTrainer

    args = trl_config(
        SFTConfig, cfg, out / "trl", cfg.sft_steps, cfg.sft_batch_size, cfg.sft_learning_rate,
        max_length=cfg.max_length, packing=False, dataset_num_proc=None,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    bar = StageBar("sft", out / "metrics.jsonl")
    _quiet(trainer, bar)
    trainer.train()
    save_pretrained(trainer.model, tokenizer, out)
    return float(bar.last_logs.get("loss", math.nan))


def train_reward_model(
    cfg: Any, init_from: str, tokenizer: PreTrainedTokenizerBase, pairs: dict[str, list], out: Path
) -> float:
    """Reward model (a scalar head on the SFT model, as in the N+ details paper) trained with TRL's
    RewardTrainer on the noisy preference pairs; saves model + tokenizer to `out`. Returns the final train
    accuracy against the (noisy) labels."""
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(cfg.seed)  # the new score head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(init_from, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = trl_config(
        RewardConfig,
        cfg,
        out / "trl",
        cfg.rm_steps,
        cfg.rm_batch_size,
        cfg.rm_learning_rate,
        max_length=cfg.max_length,
        # Keeps scores near 0 on average (Eisenstein et al. 2023), so the PPO reward scale stays sane.
        center_rewards_coefficient=0.01,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"chosen": pairs["chosen"], "rejected": pairs["rejected"]}),
        processing_class=tokenizer,
    )
    bar = StageBar("rm", out / "metrics.jsonl")
    _quiet(trainer, bar)
    trainer.train()
    save_pretrained(trainer.model, tokenizer, out)
    return float(bar.last_logs.get("accuracy", math.nan))


def train_dpo(
    cfg: Any,
    init_from: str,
    tokenizer: PreTrainedTokenizerBase,
    pairs: dict[str, list],
    beta: float,
    out: Path,
) -> float:
    """DPO (Rafailov et al. 2023) with TRL's DPOTrainer from the SFT policy (also the frozen reference) on the
    reward model's own preference pairs, as prompt / chosen / rejected completions; saves model + tokenizer to
    `out`. Returns the final training accuracy of the implicit reward against the (noisy) labels."""
    from trl import DPOConfig, DPOTrainer

    args = trl_config(
        DPOConfig, cfg, out / "trl", cfg.dpo_steps, cfg.dpo_batch_size, cfg.dpo_learning_rate,
        beta=beta, max_length=cfg.max_length, loss_type=["sigmoid"],
    )  # fmt: skip
    columns = {
        "prompt": pairs["prompt"],
        "chosen": pairs["chosen_completion"],
        "rejected": pairs["rejected_completion"],
    }
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(init_from),
        args=args,
        train_dataset=datasets.Dataset.from_dict(columns),
        processing_class=tokenizer,
    )
    bar = StageBar(f"dpo beta {beta:g}", out / "metrics.jsonl")
    _quiet(trainer, bar)
    trainer.train()
    save_pretrained(trainer.model, tokenizer, out)
    return float(bar.last_logs.get("rewards/accuracies", math.nan))


def completion_ids(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prompt_ids, completion_ids + EOS) per row, split where DPOTrainer splits: prompt + completion tokenised
    together, the completion starting after the prompt's tokens."""
    rows = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt).input_ids
        full = tokenizer(prompt + completion).input_ids + [tokenizer.eos_token_id]
        rows.append((torch.tensor(full[: len(prompt_ids)]), torch.tensor(full[len(prompt_ids) :])))
    return rows


def implicit_reward_accuracy(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: dict[str, list],
) -> float:
    """Fraction of pairs whose chosen completion gets the higher DPO implicit reward
    beta * (log pi(y|x) - log pi_ref(y|x)) (beta > 0 does not change the order, so it is left out)."""
    margins = []
    for key in ("chosen", "rejected"):
        ids = completion_ids(tokenizer, pairs["prompt"], pairs[f"{key}_completion"])
        logp, ref_logp = sequence_logprobs(policy, ids), sequence_logprobs(reference, ids)
        margins.append([a - b for a, b in zip(logp, ref_logp)])
    return sum(c > r for c, r in zip(*margins)) / len(margins[0])


def load_checkpoint_policy(sft_path: str | Path, checkpoint: Path) -> PreTrainedModel:
    """The policy of a PPOTrainer checkpoint: the SFT model with the checkpoint's trained weights
    (`policy.safetensors`, every trainable parameter; tied weights come along with their source)."""
    from safetensors.torch import load_file

    model = AutoModelForCausalLM.from_pretrained(sft_path)
    missing, unexpected = model.load_state_dict(
        load_file(str(checkpoint / "policy.safetensors")), strict=False
    )
    tied = {name for name in missing if name.endswith("lm_head.weight")}
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"{checkpoint}: policy weights do not match {sft_path} (missing {missing}, unexpected {unexpected})"
        )
    return model


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 64,
) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Completions sampled with a fixed seed, so SFT and PPO policies are compared on the same prompts with the
    same random stream. Returns the texts (special tokens dropped) and, per row, the exact token ids
    `(prompt_ids, response_ids)` (response up to and including EOS) for log-probabilities. A tokenizer without
    PAD (a user's --sft_model) gets EOS as PAD; prompts are padded on the left, whatever its padding_side, so that
    every row's completion starts right after its prompt."""
    model.eval()
    ensure_pad_token(tokenizer)
    torch.manual_seed(seed)
    texts, token_ids = [], []
    for i in range(0, len(prompts), batch_size):
        batch = tokenizer(
            prompts[i : i + batch_size], return_tensors="pt", padding=True, padding_side="left"
        )  # (batch, longest_prompt)
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        response_ids = out[:, batch["input_ids"].shape[1] :]  # (batch, new_tokens)
        texts += tokenizer.batch_decode(response_ids, skip_special_tokens=True)
        for prompt_row, mask_row, response_row in zip(
            batch["input_ids"], batch["attention_mask"], response_ids
        ):
            is_eos = (response_row == tokenizer.eos_token_id).nonzero()
            length = int(is_eos[0]) + 1 if len(is_eos) else len(response_row)
            token_ids.append((prompt_row[mask_row.bool()], response_row[:length]))
    return texts, token_ids


def load_eos_reward_model(path: str | Path, name: str = "rm") -> RewardModel:
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # RewardModel appends EOS, as TRL's RewardTrainer did to every training text
    return RewardModel(model, tokenizer, name=name, batch_size=64)


def pairwise_accuracy(rm: RewardModel, chosen: list[str], rejected: list[str]) -> float:
    """Fraction of pairs where the RM scores `chosen` above `rejected` (full texts, so the prompt is empty)."""
    empty = [""] * len(chosen)
    better, worse = rm(empty, chosen), rm(empty, rejected)
    return sum(b > w for b, w in zip(better, worse)) / len(chosen)


@torch.no_grad()
def sequence_logprobs(
    model: PreTrainedModel,
    token_ids: list[tuple[torch.Tensor, torch.Tensor]],
    temperature: float = 1.0,
    batch_size: int = 64,
) -> list[float]:
    """Sum of log-probabilities of each response's tokens given its prompt, under the policy at `temperature`
    (log_softmax(logits / T), the distribution `sample` draws from). Rows are padded on the right in batches: the
    real tokens keep positions 0.. and attend only to each other, so each sum is that of the row alone."""
    model.eval()
    totals = []
    for i in range(0, len(token_ids), batch_size):
        rows = [torch.cat([p, r]) for p, r in token_ids[i : i + batch_size]]
        ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (batch, longest); pad id irrelevant
        attention_mask = torch.zeros_like(ids)
        response_mask = torch.zeros_like(ids, dtype=torch.bool)  # marks the tokens that are predicted
        for row, (prompt_ids, response_ids) in enumerate(token_ids[i : i + batch_size]):
            attention_mask[row, : len(prompt_ids) + len(response_ids)] = 1
            response_mask[row, len(prompt_ids) : len(prompt_ids) + len(response_ids)] = True
        logits = model(input_ids=ids, attention_mask=attention_mask).logits[
            :, :-1
        ]  # (batch, longest - 1, vocab)
        logprobs = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, ids[:, 1:, None])[
            ..., 0
        ]
        totals += (logprobs * response_mask[:, 1:]).sum(-1).tolist()  # (batch,)
    return totals


def sampled_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    token_ids: list[tuple[torch.Tensor, torch.Tensor]],
    temperature: float,
) -> float:
    """KL(policy || reference) per completion, estimated on the policy's own samples drawn at `temperature`
    (k1: log pi(y|x) - log pi_ref(y|x), summed over tokens, averaged over completions; nats). Both
    log-probabilities at the sampling temperature, as the trainer's KL is."""
    logp = sequence_logprobs(policy, token_ids, temperature)
    ref_logp = sequence_logprobs(reference, token_ids, temperature)
    return sum(a - b for a, b in zip(logp, ref_logp)) / len(token_ids)
