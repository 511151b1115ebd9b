"""Rewards behind one call: Python functions and sequence-classification reward models.

A reward function is `f(prompts, completions, **columns) -> list[float]`, where `columns` are the dataset's other
columns for the same rows. A reward model is any `AutoModelForSequenceClassification` with one label (or a Hub id
/ local path of one); its score is the logit at the last real token of prompt + completion.
Every output is checked: right length, numbers, finite. A bad one raises an error naming the function and the
prompt index, so nothing is trained on garbage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf.batch import Scores
from rlhf.hub import load_model_config
from rlhf.models import disable_dropout, fuse_activations


class RewardModel:
    """Scores prompt + completion text with a sequence-classification model (one label)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        batch_size: int = 32,
        max_length: int | None = None,
        append_eos: bool = True,
    ) -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(f"reward model {name!r} has num_labels={model.config.num_labels}; expected 1")
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"reward model {name!r}: its tokenizer has no pad token; set one before training"
            )
        model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.__name__ = name
        self.batch_size = batch_size
        self.max_length = max_length
        # TRL's RewardTrainer appends EOS to every training text, so the score head learnt to read that position
        self.append_eos = append_eos and tokenizer.eos_token is not None

    def _text(self, prompt: Any, completion: str) -> str:
        """Chat prompts are rendered with the reward model's own chat template, the completion as the
        assistant's turn; plain-text prompts are concatenated."""
        if isinstance(prompt, list):
            if self.tokenizer.chat_template is None:
                raise ValueError(
                    f"reward model {self.__name__!r}: chat prompts need a tokenizer with a chat template"
                )
            messages = [*prompt, {"role": "assistant", "content": completion}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        text = prompt + completion
        if self.append_eos and not text.endswith(self.tokenizer.eos_token):
            text += self.tokenizer.eos_token
        return text

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        device = next(self.model.parameters()).device  # the CPU when offloaded
        scores: list[float] = []
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            for i in range(0, len(prompts), self.batch_size):
                texts = [
                    self._text(p, c)
                    for p, c in zip(prompts[i : i + self.batch_size], completions[i : i + self.batch_size])
                ]
                enc = self.tokenizer(
                    texts,
                    return_tensors="pt",
                    padding=True,
                    truncation=self.max_length is not None,
                    max_length=self.max_length,
                ).to(device)
                scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        finally:
            self.tokenizer.padding_side = old_side
        return scores


def load_reward_model(
    source: str | PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
    field: str = "reward_funcs",
) -> RewardModel:
    """A reward model from a Hub id, a local path or a model object (`tokenizer` defaults to the path's own)."""
    if isinstance(source, str):
        load_model_config(source, field=field, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, trust_remote_code=trust_remote_code
        )
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        name = Path(source.rstrip("/")).name
    else:
        model = source
        if tokenizer is None:
            raise ValueError(
                f"{field}: a reward model object needs its tokenizer (reward_processing_classes)"
            )
        name = Path(getattr(model.config, "_name_or_path", "") or "reward_model").name or "reward_model"
    return RewardModel(model, tokenizer, name)


def reward_name(func: Callable) -> str:
    """A reward function's own name: `__name__`, else its class's (a functools.partial: the wrapped function's)."""
    name = getattr(func, "__name__", None)
    if name is None and isinstance(func, functools.partial):
        return reward_name(func.func)
    return name if isinstance(name, str) and name else type(func).__name__


def reward_names(funcs: Sequence[Callable]) -> list[str]:
    """One distinct name per reward function, for the `reward/<name>` metrics: `reward_name`, and where two
    share one (two lambdas, two partials of one function), `<name>_2`, `<name>_3`, ... in list order, so no
    metric overwrites another's."""
    names: list[str] = []
    for func in funcs:
        base = name = reward_name(func)
        n = 1
        while name in names:
            n += 1
            name = f"{base}_{n}"
        names.append(name)
    return names


def check_rewards(
    name: str, values: Any, prompts: Sequence[Any], prompt_indices: Sequence[int] | None = None
) -> list[float]:
    """Validate one reward function's output; raise naming the function and the first bad row. Accepted as TRL
    users write them: a list (or tuple) of numbers, a numpy array, a tensor, or a list of numpy / 0-d tensor
    scalars."""

    def where(i: int) -> str:
        row = f"dataset row {prompt_indices[i]}, " if prompt_indices is not None else ""
        return f"at index {i} ({row}prompt {str(prompts[i])[:60]!r})"

    if isinstance(values, torch.Tensor) or type(values).__module__ == "numpy":
        values = values.tolist() if getattr(values, "ndim", 1) else [values.item()]
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(
            f"reward function {name!r} returned {type(values).__name__}; expected a list of floats"
        )
    if len(values) != len(prompts):
        raise ValueError(
            f"reward function {name!r} returned {len(values)} values for {len(prompts)} completions"
        )
    out = []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        # numbers.Real covers numpy's float32 / int64 scalars; bool is a number but never a reward
        if v is None or isinstance(v, bool | np.bool_) or not isinstance(v, numbers.Real):
            raise TypeError(f"reward function {name!r} returned {v!r} {where(i)}; expected a float")
        if not math.isfinite(v):
            raise ValueError(f"reward function {name!r} returned a non-finite value {v} {where(i)}")
        out.append(float(v))
    return out


def _is_async(func: Callable) -> bool:
    """An `async def` function, or an object whose __call__ is one."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)


def _call(func: Callable, kwargs: dict[str, Any], timeout: float | None) -> Any:
    """A plain reward function, stopped waiting for after `timeout` seconds. Its thread cannot be killed, so it
    runs as a daemon thread: left to finish on its own, never joined at interpreter exit (a
    ThreadPoolExecutor's worker would be, and a function that never returns would keep the process alive)."""
    if timeout is None:
        return func(**kwargs)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = func(**kwargs)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name=f"reward:{reward_name(func)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"did not return within reward_timeout={timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _call_async(funcs: Sequence[Callable], kwargs: dict[str, Any], timeout: float | None) -> list[Any]:
    """`async def` reward functions, all at once in one event loop (in a thread of its own when the caller
    already runs a loop, as a notebook does); a result or the exception it raised for each."""

    async def one(func: Callable) -> Any:
        try:
            return await asyncio.wait_for(func(**kwargs), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"did not return within reward_timeout={timeout:g} s") from None

    async def every() -> list[Any]:
        return await asyncio.gather(*(one(f) for f in funcs), return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running: the usual case
        return asyncio.run(every())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, every()).result()


def compute_rewards(
    reward_funcs: Sequence[Callable],
    prompts: list[Any],
    completions: list[str],
    columns: dict[str, list],
    prompt_indices: Sequence[int] | None = None,
    timeout: float | None = None,
) -> torch.Tensor:
    """Call every reward function (plain ones in order, `async def` ones concurrently); returns (num_funcs,
    batch) raw scores. An exception, a timeout included, is re-raised naming the function and the dataset rows."""
    kwargs = {"prompts": prompts, "completions": completions, **columns}
    where = f" (dataset rows {sorted(set(prompt_indices))})" if prompt_indices is not None else ""

    def failed(func: Callable, err: BaseException) -> RuntimeError:
        return RuntimeError(
            f"reward function {reward_name(func)!r} raised {type(err).__name__}: {err}{where}"
        )

    outputs: list[Any] = [None] * len(reward_funcs)
    asyncs = [i for i, f in enumerate(reward_funcs) if _is_async(f)]
    for i, func in enumerate(reward_funcs):
        if i not in asyncs:
            try:
                outputs[i] = _call(func, kwargs, timeout)
            except Exception as err:
                raise failed(func, err) from err
    for i, value in zip(
        asyncs, _call_async([reward_funcs[i] for i in asyncs], kwargs, timeout) if asyncs else []
    ):
        if isinstance(value, BaseException):
            raise failed(reward_funcs[i], value) from value
        outputs[i] = value
    rows = [check_rewards(reward_name(f), v, prompts, prompt_indices) for f, v in zip(reward_funcs, outputs)]
    return torch.tensor(rows, dtype=torch.float32)


def build_reward_funcs(
    reward_funcs: Any,
    tokenizer: PreTrainedTokenizerBase,
    reward_processing_classes: PreTrainedTokenizerBase | list | None = None,
    trust_remote_code: bool = False,
    fuse: bool = True,
) -> list[Callable]:
    """The trainer's `reward_funcs` argument (one or a list of Python functions, reward-model ids / paths /
    models) as a list of callables with one signature. Reward models in eval mode, dropout off (N+ detail),
    with fused activations when `fuse`; placing them on devices / engines is the trainer's job."""
    funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    if not funcs:
        raise ValueError("reward_funcs: give at least one reward function or reward model")
    rm_tokenizers = reward_processing_classes
    if not isinstance(rm_tokenizers, list):
        rm_tokenizers = [rm_tokenizers] * len(funcs)
    out: list[Callable] = []
    for i, (func, rm_tok) in enumerate(zip(funcs, rm_tokenizers)):
        if isinstance(func, str | PreTrainedModel):
            rm = load_reward_model(
                func,
                rm_tok or (tokenizer if not isinstance(func, str) else None),
                trust_remote_code,
                field=f"reward_funcs[{i}]",
            )
            disable_dropout(rm.model)
            if fuse:
                fuse_activations(rm.model)
            out.append(rm)
        elif callable(func):
            out.append(func)
        else:
            raise TypeError(
                f"reward_funcs[{i}]: expected a callable, a model id/path or a model, got {func!r}"
            )
    return out


def score(
    reward_funcs: Sequence[Callable],
    weights: torch.Tensor,
    prompts: list[Any],
    completions: list[str],
    columns: dict[str, list],
    ended_with_eos: torch.Tensor,
    missing_eos_penalty: float | None = None,
    prompt_indices: Sequence[int] | None = None,
    timeout: float | None = None,
) -> Scores:
    """Every reward function on every completion, weighted and summed: total = sum_i weights_i * raw_i, except
    that a completion that never emitted EOS gets `missing_eos_penalty` when it is set (N+ 'EOS trick').
    Weight-0 functions are computed and logged but do not train."""
    raw = compute_rewards(
        reward_funcs, prompts, completions, columns, prompt_indices, timeout
    )  # (funcs, batch)
    raw = raw.to(ended_with_eos.device)
    total = (weights.to(raw.device)[:, None] * raw).sum(0)  # (batch,)
    if missing_eos_penalty is not None:
        total = torch.where(ended_with_eos, total, torch.full_like(total, missing_eos_penalty))
    return Scores(raw, total, ended_with_eos)


@dataclass(frozen=True)
class RewardSet:
    """The run's reward functions with their names, weights and settings: `rewards(prompts, completions, ...)` is
    the score stage (`score`) with everything but the batch fixed."""

    funcs: list[Callable]
    names: list[str]  # the `reward/<name>` metric keys, one per function
    weights: torch.Tensor  # (num_funcs,)
    missing_eos_penalty: float | None = None
    timeout: float | None = None

    def __call__(
        self,
        prompts: list[Any],
        completions: list[str],
        columns: dict[str, list],
        ended_with_eos: torch.Tensor,
        prompt_indices: Sequence[int] | None = None,
    ) -> Scores:
        return score(
            self.funcs,
            self.weights,
            prompts,
            completions,
            columns,
            ended_with_eos,
            self.missing_eos_penalty,
            prompt_indices=prompt_indices,
            timeout=self.timeout,
        )
