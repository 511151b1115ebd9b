"""Held-out evaluation (greedy by default) and the best-checkpoint tracker.

`evaluate` completes every eval prompt, scores the completions with every reward function (weight-0 ones
included: a gold judge can be watched without training on it) and returns `eval/*` metrics over all ranks.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase

from classic.runlog import read_metrics
from rlhf import engines
from rlhf.checkpoint import PREFIX, list_checkpoints
from rlhf.prompts import PromptSet, left_pad
from rlhf.rewards import RewardSet
from rlhf.rollout import Generator, ends_with_eos


def eval_metric_names(reward_names: list[str]) -> list[str]:
    """The keys `evaluate` returns (metric_for_best_model must be one of them)."""
    names = ["eval/reward", "eval/reward_std", "eval/completion_length", "eval/eos_fraction"]
    for name in reward_names:
        names += [f"eval/reward/{name}", f"eval/reward/{name}_std"]
    return names


@dataclass
class BestTracker:
    """The best value of `metric` (an eval metric) so far and the checkpoint that holds it."""

    metric: str | None
    greater_is_better: bool = True
    value: float | None = None
    checkpoint: str | None = None  # its directory name in output_dir

    def update(self, row: dict[str, float], step: int) -> bool:
        """True when `row` improves on the best so far (then the caller checkpoints `step` at once)."""
        value = row.get(self.metric) if self.metric else None
        if value is None or not math.isfinite(value):
            return False
        if self.value is None or (value > self.value if self.greater_is_better else value < self.value):
            self.value, self.checkpoint = value, f"{PREFIX}{step}"
            return True
        return False

    def existing(self, output_dir: str | Path, step: int, warn: bool = True) -> str | None:
        """The best checkpoint's name, re-established when its directory is gone or incomplete (deleted between
        runs, or while this one ran): the best of the complete checkpoints that exist, by their eval rows (up to
        `step`) in metrics.jsonl, or None when none was evaluated; `warn`: say so in one line."""
        out = Path(output_dir)
        if self.checkpoint is None or (out / self.checkpoint / "trainer_state.json").is_file():
            return self.checkpoint
        gone, old = self.checkpoint, self.value
        rows = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
        values = {r["step"]: r[self.metric] for r in rows if self.metric in r and r.get("step", 0) <= step}
        self.value = self.checkpoint = None
        for ckpt in list_checkpoints(out):
            at = int(ckpt.name[len(PREFIX) :])
            if at in values and (ckpt / "trainer_state.json").is_file():
                self.update({self.metric: values[at]}, at)
        if warn:
            now = f"{self.checkpoint} ({self.value:.4g})" if self.checkpoint else "none (none was evaluated)"
            warnings.warn(
                f"best checkpoint {gone} ({self.metric} {old}) is gone from {out}; the best of the checkpoints "
                f"that exist: {now}",
                stacklevel=2,
            )
        return self.checkpoint


@dataclass(frozen=True)
class EvalSettings:
    """PPOConfig's eval_* fields, and the seed the eval sampling stream derives from."""

    num_generations: int = 1
    batch_size: int = 32
    temperature: float = 0.0
    seed: int = 0


def _my_rows(n_prompts: int, num_generations: int, accelerator: Accelerator) -> tuple[list[int], int]:
    """This rank's equal share of the eval rows, the last share padded with repeats (dropped from the metrics):
    generation under FSDP2 / ZeRO-3 and sharded reward models are collectives, so every rank runs the same
    number of passes. Returns (rows, how many are real)."""
    rows = [i for i in range(n_prompts) for _ in range(num_generations)]
    per_rank = -(-len(rows) // accelerator.num_processes)
    mine = rows[accelerator.process_index * per_rank : (accelerator.process_index + 1) * per_rank]
    n_valid = len(mine)
    return mine + [rows[-1]] * (per_rank - n_valid), n_valid


@torch.no_grad()
def _complete(
    accelerator: Accelerator,
    policy: torch.nn.Module,
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    batch_size: int,
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Completions of `prompt_ids`, `batch_size` at a time: (texts, lengths (n,), ended with EOS (n,))."""
    completions, lengths, eos_flags = [], [], []
    with accelerator.autocast(), engines.gathered_parameters(accelerator, policy):
        for start in range(0, len(prompt_ids), batch_size):
            samples = generator.generate(
                *left_pad(prompt_ids[start : start + batch_size], tokenizer.pad_token_id, accelerator.device)
            )
            completions += tokenizer.batch_decode(samples.response_ids, skip_special_tokens=True)
            lengths.append(samples.response_mask.sum(1).float())
            eos_flags.append(
                ends_with_eos(samples.response_ids, samples.response_mask, tokenizer.eos_token_id)
            )
    return completions, torch.cat(lengths), torch.cat(eos_flags)


def _metrics(every: torch.Tensor, reward_names: list[str]) -> dict[str, float]:
    """eval/* from the gathered rows [total, raw per function..., length, EOS] of the real completions."""

    def mean_std(col: torch.Tensor) -> tuple[float, float]:
        return col.mean().item(), col.std().item() if len(col) > 1 else 0.0

    metrics = {}
    metrics["eval/reward"], metrics["eval/reward_std"] = mean_std(every[:, 0])
    for j, name in enumerate(reward_names):
        metrics[f"eval/reward/{name}"], metrics[f"eval/reward/{name}_std"] = mean_std(every[:, 1 + j])
    metrics["eval/completion_length"] = every[:, -2].mean().item()
    metrics["eval/eos_fraction"] = every[:, -1].mean().item()
    return {k: round(v, 6) for k, v in metrics.items()}


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    policy: torch.nn.Module,
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    rewards: RewardSet,
    data: PromptSet,
    settings: EvalSettings,
    step: int,
    completions_file: Path | None = None,
    watchdog: engines.Watchdog | None = None,
) -> dict[str, float]:
    """Completions for every prompt of `data` (settings.num_generations each; greedy unless temperature > 0),
    scored by every reward function. Returns the eval/* metrics over all ranks, the same on every rank (time/eval
    is the rank's own); with `completions_file`, appends one JSON row per completion there. Sampling draws from a
    stream of its own seeded by (seed, step, rank), so evaluating never changes the training run's samples."""
    acc = accelerator
    mine, n_valid = _my_rows(len(data), settings.num_generations, acc)
    t0 = time.perf_counter()
    generator = copy.copy(generator)  # the same engine, at the eval temperature
    generator.temperature = settings.temperature
    device_type = acc.device.type if acc.device.type != "cpu" else "cuda"
    devices = [acc.device.index or 0] if acc.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(settings.seed + 1_000_003 * (step + 1) + acc.process_index)
        completions, lengths, ended = _complete(
            acc, policy, generator, tokenizer, [data.ids[i] for i in mine], settings.batch_size
        )
    prompts, columns = data.rows(mine)
    scores = rewards(prompts, completions, columns, ended, prompt_indices=mine)
    if watchdog is not None:
        watchdog.check_in("eval generate + score")
    # one row per completion: total, each function's raw score, length, EOS, real (not padding)
    real = (torch.arange(len(mine)) < n_valid).float()
    local = torch.stack([scores.total.float(), *scores.raw.float(), lengths, ended.float(), real], dim=1)
    local = local.to(acc.device)
    every = acc.gather(local) if acc.num_processes > 1 else local
    metrics = _metrics(every[every[:, -1] == 1][:, :-1].double().cpu(), rewards.names)
    metrics["time/eval"] = round(time.perf_counter() - t0, 3)
    if completions_file is not None:
        logged = [
            {
                "step": step,
                "prompt": prompts[i],
                "completion": completions[i],
                **{f"reward/{n}": float(scores.raw[j, i]) for j, n in enumerate(rewards.names)},
                "reward": float(scores.total[i]),
                "length": int(lengths[i]),
                "ended_with_eos": bool(scores.ended_with_eos[i]),
            }
            for i in range(n_valid)
        ]
        _append_rows(acc, completions_file, logged)
    return metrics


def _append_rows(accelerator: Accelerator, path: Path, rows: list[dict[str, Any]]) -> None:
    """Every rank's rows, appended to `path` as JSON lines by the main process (a collective on several)."""
    rows = gather_object(rows) if accelerator.num_processes > 1 else rows
    if accelerator.is_main_process:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


EPISODE_METRICS = (
    "episode_return",
    "success_rate",
    "invalid_action_fraction",
    "episode_turns",
    "tokens_per_turn",
)


@torch.no_grad()
def evaluate_episodes(
    accelerator: Accelerator,
    policy: torch.nn.Module,
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    envs: list[Any],
    seeds: list[int],
    settings: EvalSettings,
    step: int,
    max_turns: int,
    max_length: int,
    history_turns: int | None = None,
) -> dict[str, float]:
    """One episode per held-out env seed (settings.num_generations each; greedy unless temperature > 0), split
    evenly over ranks like `evaluate`; returns eval/<EPISODE_METRICS> over all ranks, the same on every rank."""
    from rlhf.episodes import run_episodes

    acc = accelerator
    mine, n_valid = _my_rows(len(seeds), settings.num_generations, acc)
    t0 = time.perf_counter()
    generator = copy.copy(generator)
    generator.temperature = settings.temperature
    rows = []
    device_type = acc.device.type if acc.device.type != "cpu" else "cuda"
    devices = [acc.device.index or 0] if acc.device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(settings.seed + 1_000_003 * (step + 1) + acc.process_index)
        with acc.autocast(), engines.gathered_parameters(acc, policy):
            for start in range(0, len(mine), len(envs)):
                chunk = [seeds[i] for i in mine[start : start + len(envs)]]
                batch = run_episodes(
                    generator, tokenizer, envs, chunk, max_turns, max_length, acc.device, history_turns
                )
                rows += [
                    [
                        d["return"],
                        d["success"],
                        sum(t["invalid"] for t in d["turns"]),
                        len(d["turns"]),
                        d["tokens"],
                    ]
                    for d in batch.dialogues
                ]
    real = [float(i < n_valid) for i in range(len(mine))]
    local = torch.tensor(
        [[*map(float, r), m] for r, m in zip(rows, real)], dtype=torch.float64, device=acc.device
    )
    every = acc.gather(local) if acc.num_processes > 1 else local
    every = every[every[:, -1] == 1].cpu()
    turns = max(every[:, 3].sum().item(), 1.0)
    metrics = {
        "eval/episode_return": every[:, 0].mean().item(),
        "eval/success_rate": every[:, 1].mean().item(),
        "eval/invalid_action_fraction": every[:, 2].sum().item() / turns,
        "eval/episode_turns": every[:, 3].mean().item(),
        "eval/tokens_per_turn": every[:, 4].sum().item() / turns,
    }
    metrics = {k: round(v, 6) for k, v in metrics.items()}
    metrics["time/eval"] = round(time.perf_counter() - t0, 3)
    return metrics
