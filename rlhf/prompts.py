"""Prompts: tokenised once up front (bad rows fail before any training), batched by step, left-padded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PromptSet:
    """A prompt dataset, tokenised: row i is prompts[i] (text or chat messages), ids[i] (its token ids) and
    columns[c][i] for every other column (passed to the reward functions)."""

    prompts: list[Any]
    columns: dict[str, list]
    ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, indices: list[int]) -> tuple[list[Any], dict[str, list]]:
        """The prompts and column values of the rows `indices` (repeats allowed)."""
        return [self.prompts[i] for i in indices], {
            k: [v[i] for i in indices] for k, v in self.columns.items()
        }


def prompt_text(prompt: Any, tokenizer: PreTrainedTokenizerBase, where: str) -> str:
    """A prompt as the text the model sees: chat messages through the chat template (with the generation prompt)."""
    if isinstance(prompt, list):  # chat messages
        if tokenizer.chat_template is None:
            raise ValueError(f"{where}: chat-message prompt but the tokenizer has no chat template")
        for j, message in enumerate(prompt):  # a template would render a missing field as '' or 'None'
            for key in ("role", "content"):
                if not isinstance(message, dict) or message.get(key) is None:
                    raise ValueError(
                        f"{where}: chat message {j} has no {key!r} (each message is {{'role': ..., 'content': "
                        f"...}}), got {message!r}"
                    )
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    raise TypeError(f"{where}: 'prompt' must be a string or chat messages, got {prompt!r}")


def tokenize_prompts(
    dataset: Any, field: str, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int
) -> PromptSet:
    """Every row of a dataset with a `prompt` column (text or chat messages) tokenised, or a one-line error naming
    `field` and the row."""
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
        ids = tokenizer(prompt_text(prompt, tokenizer, f"{field} row {i}"), add_special_tokens=False)[
            "input_ids"
        ]
        if not ids:
            raise ValueError(f"{field} row {i}: empty prompt")
        if len(ids) > max_prompt_length:
            raise ValueError(
                f"{field} row {i}: prompt has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}"
            )
        prompt_ids.append(ids)
    return PromptSet(prompts, columns, prompt_ids)


def context_window(model_config: Any) -> int | None:
    """The model's number of positions (None when its config does not say)."""
    return getattr(model_config, "max_position_embeddings", None) or getattr(
        model_config, "n_positions", None
    )


def check_context_window(model_config: Any, max_prompt_length: int, max_new_tokens: int) -> None:
    """The longest prompt plus the longest completion must fit the model's positions."""
    max_positions = context_window(model_config)
    if max_positions and max_prompt_length + max_new_tokens > max_positions:
        raise ValueError(
            f"max_prompt_length + max_new_tokens = {max_prompt_length + max_new_tokens} exceeds the "
            f"model's context window ({max_positions} positions)"
        )


def prepare_prompts(
    train_dataset: Any,
    eval_dataset: Any,
    tokenizer: PreTrainedTokenizerBase,
    args: Any,
    num_processes: int,
    model_config: Any,
) -> tuple[PromptSet, PromptSet | None]:
    """The trainer's train and eval prompts, tokenised and checked against the config (enough prompts for one
    step on every rank, the context window, an eval dataset where evaluation is asked for)."""
    if args.advantage_estimator == "gigpo":
        raise ValueError(
            "advantage_estimator='gigpo' needs env episodes (its step groups are replies to the same observation): "
            "pass env_factory instead of a prompt dataset"
        )
    train = tokenize_prompts(train_dataset, "train_dataset", tokenizer, args.max_prompt_length)
    if len(train) < args.rollout_batch_size * num_processes:
        raise ValueError(
            f"train_dataset has {len(train)} prompts; one step needs rollout_batch_size * num_processes = "
            f"{args.rollout_batch_size * num_processes}"
        )
    check_context_window(model_config, args.max_prompt_length, args.max_new_tokens)
    if eval_dataset is None:
        if args.eval_steps or args.eval_on_start:
            raise ValueError(
                f"eval_steps={args.eval_steps} / eval_on_start={args.eval_on_start} but no eval_dataset was given "
                "to PPOTrainer"
            )
        return train, None
    evals = tokenize_prompts(eval_dataset, "eval_dataset", tokenizer, args.max_prompt_length)
    if not len(evals):
        raise ValueError("eval_dataset: the dataset is empty")
    if missing := sorted(set(train.columns) - set(evals.columns)):  # the reward functions get every column
        raise ValueError(
            f"eval_dataset: no column(s) {missing} that train_dataset has (the reward functions receive them); "
            "add them to eval_dataset or remove them from train_dataset"
        )
    return train, evals


def batch_indices(
    step: int, num_prompts: int, rollout_batch_size: int, num_processes: int, process_index: int, seed: int
) -> list[int]:
    """Dataset rows for one rank at `step`: a seeded permutation per epoch, so the position in the data is a
    function of the step alone (exact resume). Ranks take consecutive slices of the step's share."""
    per_step = rollout_batch_size * num_processes
    steps_per_epoch = num_prompts // per_step
    epoch, pos = divmod(step, steps_per_epoch)
    order = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
    start = pos * per_step + process_index * rollout_batch_size
    return order[start : start + rollout_batch_size].tolist()


def left_pad(
    rows: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as (batch, longest) ids and attention mask, padded on the left so that every completion
    starts at the same column."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows])  # (batch, prompt_len)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids.to(device), mask.to(device)
