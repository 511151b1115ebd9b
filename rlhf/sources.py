"""Where a step's samples come from, behind one interface the trainer calls:

    PromptSource  prompts of a dataset, one completion each, scored by the reward functions (single-turn)
    EnvSource     episodes of a text env reset with a seed each, scored by the env's rewards (multi-turn)

`generate(generator, rows, device)` runs the policy (inside the trainer's autocast and gathered-parameters
context), `score(generated, rows)` turns the result into a `Scored` batch, `evaluate(...)` gives the eval/*
metrics on the held-out prompts or seeds. Rows index the train prompts (or seeds); a group of `num_generations`
consecutive rows repeats one prompt (or one env seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from rlhf import engines
from rlhf.batch import Samples, Scores
from rlhf.episodes import EpisodeBatch, episode_scores, run_episodes
from rlhf.evaluation import EPISODE_METRICS, EvalSettings, eval_metric_names, evaluate, evaluate_episodes
from rlhf.prompts import PromptSet, left_pad
from rlhf.rewards import RewardSet
from rlhf.rollout import Generator, ends_with_eos


@dataclass(frozen=True)
class Scored:
    """A scored batch and what it was made from (for the logs)."""

    samples: Samples
    scores: Scores
    prompts: list[Any]  # the rows' prompts (env runs: their seeds)
    completions: list[str]  # decoded responses (env runs: the whole dialogue after the prompt)
    stats: dict[str, float]  # source-specific rollout metrics (env runs: episode_return, success_rate, ...)
    extras: list[dict[str, Any]] | None = None  # env runs: each episode's turns for completions.jsonl


class PromptSource:
    """Single-turn: a prompt dataset (tokenised PromptSet) and the reward functions that score completions."""

    def __init__(
        self,
        train: PromptSet,
        evals: PromptSet | None,
        rewards: RewardSet,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        self.train, self.evals, self.rewards, self.tokenizer = train, evals, rewards, tokenizer

    def __len__(self) -> int:
        return len(self.train)

    @property
    def eval_size(self) -> int | None:
        return len(self.evals) if self.evals is not None else None

    @property
    def eval_metric_names(self) -> list[str]:
        return eval_metric_names(self.rewards.names)

    def generate(self, generator: Generator, rows: list[int], device: torch.device) -> Samples:
        return generator.generate(
            *left_pad([self.train.ids[i] for i in rows], self.tokenizer.pad_token_id, device)
        )

    def score(self, samples: Samples, rows: list[int]) -> Scored:
        completions = self.tokenizer.batch_decode(samples.response_ids, skip_special_tokens=True)
        prompts, columns = self.train.rows(rows)
        ended = ends_with_eos(samples.response_ids, samples.response_mask, self.tokenizer.eos_token_id)
        scores = self.rewards(prompts, completions, columns, ended, prompt_indices=rows)
        return Scored(samples, scores, prompts, completions, {})

    def evaluate(
        self,
        accelerator: Accelerator,
        policy: torch.nn.Module,
        generator: Generator,
        settings: EvalSettings,
        step: int,
        completions_file: Path | None,
        watchdog: engines.Watchdog | None,
    ) -> dict[str, float]:
        return evaluate(
            accelerator, policy, generator, self.tokenizer, self.rewards, self.evals, settings, step,
            completions_file, watchdog,
        )  # fmt: skip


class EnvSource:
    """Multi-turn: text envs (one per row of a step or of an eval batch), reset with the train / eval seeds; the
    env's rewards score the episodes. max_length: the model's context window."""

    def __init__(
        self,
        envs: list[Any],
        seeds: list[int],
        eval_seeds: list[int] | None,
        tokenizer: PreTrainedTokenizerBase,
        max_turns: int,
        max_length: int,
        history_turns: int | None = None,
        eval_envs: list[Any] | None = None,
    ) -> None:
        self.envs, self.seeds, self.eval_seeds, self.tokenizer = envs, seeds, eval_seeds, tokenizer
        self.max_turns, self.max_length, self.history_turns = max_turns, max_length, history_turns
        self.eval_envs = (
            eval_envs if eval_envs is not None else envs
        )  # e.g. another start square than training

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def eval_size(self) -> int | None:
        return len(self.eval_seeds) if self.eval_seeds else None

    @property
    def eval_metric_names(self) -> list[str]:
        return [f"eval/{k}" for k in EPISODE_METRICS]

    def generate(self, generator: Generator, rows: list[int], device: torch.device) -> EpisodeBatch:
        seeds = [self.seeds[i] for i in rows]
        return run_episodes(
            generator, self.tokenizer, self.envs, seeds, self.max_turns, self.max_length, device,
            self.history_turns,
        )  # fmt: skip

    def score(self, episodes: EpisodeBatch, rows: list[int]) -> Scored:
        prompts = [self.seeds[i] for i in rows]
        return Scored(
            episodes.samples, episode_scores(episodes), prompts, episodes.completions, episodes.stats,
            episodes.dialogues,
        )  # fmt: skip

    def evaluate(
        self,
        accelerator: Accelerator,
        policy: torch.nn.Module,
        generator: Generator,
        settings: EvalSettings,
        step: int,
        completions_file: Path | None,
        watchdog: engines.Watchdog | None,
    ) -> dict[str, float]:
        return evaluate_episodes(
            accelerator, policy, generator, self.tokenizer, self.eval_envs, self.eval_seeds, settings, step,
            self.max_turns, self.max_length, self.history_turns,
        )  # fmt: skip
