"""Datasets for the `rlhf` commands: one split of a Hub dataset or a local copy (errors name the config field),
and the rows of the shipped tasks turned into prompts.

A dataset source is one of
    a Hub id                      stanfordnlp/imdb        (load_dataset(id, config, split=...))
    a directory from save_to_disk ./data/imdb             (a DatasetDict picks `split`; a Dataset is used as is)
    a json / jsonl / csv / parquet file                   (one file = one split)
    a directory of data files     ./data/gsm8k/           (load_dataset(dir, split=...))
so a run works on an offline machine by pointing `dataset_name` at a local copy; nothing else changes.

Tasks (`build_prompts(task, rows)`): imdb (the first words of a review), gsm8k (one chat turn from `question`;
`answer` kept for the reward), tldr (the `prompt` column). Their rewards are in rlhf.task_rewards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from transformers import PreTrainedTokenizerBase

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


# --- datasets ---------------------------------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or Path(name).suffix.lower() in DATA_FILE_BUILDERS
    )


def load_dataset_checked(
    name: str,
    config: str | None = None,
    split: str = "train",
    field: str = "dataset_name",
    max_samples: int | None = None,
    split_field: str = "dataset_split",
) -> Dataset:
    """One split of a Hub dataset or a local copy (see the module docstring). Every failure (missing path, Hub id
    that cannot be reached, unknown split) raises before any model is loaded, naming `field`."""
    path = Path(name).expanduser()
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"{field}={name!r}: unsupported file type {path.suffix!r}; use one of {sorted(DATA_FILE_BUILDERS)}, "
                "a directory written by Dataset.save_to_disk, or a Hub id"
            )
        if _is_blank(path):  # datasets fails on these with a bare StopIteration or "no data"
            raise ValueError(
                f"{field}={name!r}: the file is empty; expected a {builder} file with at least one row"
            )
        dataset = load_dataset(builder, data_files=str(path), split="train")
    elif path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"{field}={name!r}: no split {split!r} ({split_field}); splits are {sorted(loaded)}"
                )
            loaded = loaded[split]
        dataset = loaded
    elif path.is_dir():
        dataset = _load_dataset_or_explain(str(path), config, split, field, name)
    elif _looks_like_path(name):
        raise FileNotFoundError(f"{field}={name!r}: no such local file or directory")
    else:
        dataset = _load_dataset_or_explain(name, config, split, field, name)
    if len(dataset) == 0:
        raise ValueError(f"{field}={name!r} (split {split!r}) has no rows")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def _is_blank(path: Path) -> bool:
    """Empty, or only whitespace (blank lines); looks at the first 64 KiB, so a big file costs nothing."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    return not head.strip() and path.stat().st_size <= len(head)


def _load_dataset_or_explain(source: str, config: str | None, split: str, field: str, name: str) -> Dataset:
    try:
        return load_dataset(source, config, split=split)
    except ValueError as err:  # unknown split or config: the message lists the valid ones
        raise ValueError(
            f"{field}={name!r} (dataset_config={config!r}, dataset_split={split!r}): {err}"
        ) from err
    except Exception as err:  # offline, unknown id, gated: datasets raises several types
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = (
            "this machine is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and the dataset is not in the local cache"
            if offline
            else f"{type(err).__name__}: {err}"
        )
        raise OSError(
            f"{field}={name!r} could not be loaded: {reason}. On a connected machine run "
            f"`datasets.load_dataset({name!r}, {config!r}, split={split!r}).save_to_disk('./{Path(name).name}')` "
            f"and pass the local directory as {field}."
        ) from err


def require_columns(dataset: Dataset, columns: tuple[str, ...], field: str = "dataset_name") -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{field}: the dataset has no column(s) {missing}; its columns are {dataset.column_names}"
        )


# --- prompts ----------------------------------------------------------------------------------------------------
GSM8K_INSTRUCTION = (
    "Solve the problem step by step. End with the final answer as a number on its own line, "
    "in the form '#### <number>'."
)


def imdb_prompts(dataset: Dataset, prompt_words: int) -> Dataset:
    """The first `prompt_words` words of each review (HTML line breaks removed): the policy continues the review."""
    require_columns(dataset, ("text",))

    def first_words(row: dict[str, Any]) -> dict[str, str]:
        return {"prompt": " ".join(row["text"].replace("<br />", " ").split()[:prompt_words])}

    return dataset.map(first_words, remove_columns=dataset.column_names)


def gsm8k_prompts(dataset: Dataset) -> Dataset:
    """Chat-message prompts (one user turn) from `question`; `answer` (ending '#### N') goes to the reward."""
    require_columns(dataset, ("question", "answer"))

    def to_messages(row: dict[str, Any]) -> dict[str, Any]:
        content = f"{row['question']}\n\n{GSM8K_INSTRUCTION}"
        return {"prompt": [{"role": "user", "content": content}], "answer": row["answer"]}

    return dataset.map(to_messages, remove_columns=dataset.column_names)


def tldr_prompts(dataset: Dataset) -> Dataset:
    """trl-lib/tldr rows already carry the prompt ('SUBREDDIT: ... POST: ... TL;DR:'); keep only it."""
    require_columns(dataset, ("prompt",))
    return dataset.select_columns(["prompt"])


def build_prompts(task: str, dataset: Dataset, prompt_words: int = 8) -> Dataset:
    if task == "imdb":
        return imdb_prompts(dataset, prompt_words)
    if task == "gsm8k":
        return gsm8k_prompts(dataset)
    if task == "tldr":
        return tldr_prompts(dataset)
    raise ValueError(f"task={task!r}: expected imdb, gsm8k or tldr")


def prompt_text(prompt: str | list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> str:
    """What the policy sees: the string itself, or the chat template with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def drop_long_prompts(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int
) -> tuple[Dataset, int]:
    """Rows whose prompt is longer than `max_prompt_length` tokens (the trainer rejects those); returns the kept
    rows and how many were dropped."""
    if isinstance(dataset[0]["prompt"], list) and tokenizer.chat_template is None:
        raise ValueError(
            "model_name_or_path: chat-message prompts need a tokenizer with a chat template (use an instruct model)"
        )

    def short_enough(rows: dict[str, list]) -> list[bool]:
        texts = [prompt_text(p, tokenizer) for p in rows["prompt"]]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) <= max_prompt_length for x in ids]

    kept = dataset.filter(short_enough, batched=True)
    return kept, len(dataset) - len(kept)
