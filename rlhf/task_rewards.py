"""The rewards of the shipped tasks: `gsm8k_exact_answer` (a reward function, by name in REWARD_FUNCTIONS) and
`ClassifierLabelReward` (one label's logit of a multi-label sequence classifier, e.g. POSITIVE of an IMDB sentiment
model). Both follow rlhf's reward-function protocol: `f(prompts, completions, **columns) -> list[float]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.hub import load_model_config

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> Decimal | None:
    """The final answer of a GSM8K-style text: the number after the last '####' if there is one, else the last
    number in the text. '$1,234.50' -> Decimal('1234.50'); None if there is no number."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    token = found[0] if "####" in text else found[-1]
    try:
        return Decimal(token.replace(",", "").replace("$", ""))
    except InvalidOperation:
        return None


def gsm8k_exact_answer(prompts: list, completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's final number equals the reference answer (the number after '#### '), else 0.0.
    Decimal equality, so '18', '18.0' and '$18' all match '#### 18'."""
    scores = []
    for completion, reference in zip(completions, answer):
        expected = parse_number(reference)
        got = parse_number(completion)
        scores.append(1.0 if expected is not None and got is not None and got == expected else 0.0)
    return scores


REWARD_FUNCTIONS: dict[str, Callable[..., list[float]]] = {"gsm8k_exact_answer": gsm8k_exact_answer}


class ClassifierLabelReward:
    """Score = the logit of one label of a sequence classifier, e.g. POSITIVE of the 2-label sentiment model
    `lvwerra/distilbert-imdb` (rlhf.RewardModel expects num_labels=1, so multi-label classifiers go through here).
    It scores prompt + completion with the classifier's own tokenizer, as in TRL's gpt2-sentiment example."""

    def __init__(
        self,
        name_or_path: str,
        label: str,
        field: str = "reward_model_name_or_path",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> None:
        config = load_model_config(name_or_path, field=field, trust_remote_code=trust_remote_code)
        label2id = {str(k).upper(): int(v) for k, v in (config.label2id or {}).items()}
        if label.upper() not in label2id:
            raise ValueError(
                f"reward_label={label!r}: {field}={name_or_path!r} has labels {sorted(config.label2id or {})}"
            )
        self.label_id = label2id[label.upper()]
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"{field}={name_or_path!r}: the classifier's tokenizer has no pad token")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        )
        self.model.config.pad_token_id = (
            self.tokenizer.pad_token_id
        )  # last-token classifiers find the end by it
        self.model.eval().requires_grad_(False)
        self.batch_size = batch_size
        self.__name__ = f"{Path(name_or_path.rstrip('/')).name}:{label.upper()}"

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        # the process's device, known once the trainer's Accelerator exists (creating accelerate state earlier
        # would fix it before `accelerate launch`'s settings are read)
        device = PartialState().device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        texts = [p + c for p, c in zip(prompts, completions)]
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="right",
                truncation=True,
            ).to(device)
            logits = self.model(**enc).logits  # (batch, num_labels)
            scores.extend(logits[:, self.label_id].float().tolist())
        return scores
