"""What a run writes while it trains: metrics.jsonl, the trackers (`report_to`), completions.jsonl, the
progress bar. Metrics are reduced over ranks here (`gather_metrics`); rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from classic import functional as F
from classic.runlog import MetricsWriter
from rlhf.batch import Experience, Rollout, Scores, fold_turns


def gather_metrics(accelerator: Accelerator, stats: dict[str, float | None], step: int) -> dict[str, float]:
    """One step's row over ranks: `*_min` the minimum, `*_max` the maximum, `time/*` the slowest rank's (a step
    lasts as long as its slowest rank), the rest the mean (update statistics are already all-rank sums, the same
    on every rank); tokens/s = all ranks' generated tokens over the step time."""
    acc = accelerator
    keys = sorted(k for k, v in stats.items() if v is not None)
    local = torch.tensor([[float(stats[k]) for k in keys]], device=acc.device)
    every = acc.gather(local) if acc.num_processes > 1 else local  # (ranks, keys)
    values = [
        every[:, i].min()
        if k.endswith("_min")
        else every[:, i].max()
        if k.endswith("_max") or k.startswith("time/")
        else every[:, i].mean()
        for i, k in enumerate(keys)
    ]
    row = {"step": step, **{k: round(float(v), 6) for k, v in zip(keys, values)}}
    row["generated_tokens"] = row["generated_tokens"] * acc.num_processes
    row["tokens_per_s"] = round(row["generated_tokens"] / max(row["time/step"], 1e-9), 2)
    return row


def rollout_stats(
    exp: Experience, scores: Scores, reward_names: list[str], group_size: int
) -> dict[str, float | None]:
    """This rank's rollout metrics: rewards (total and per function), completion lengths, EOS, KL, zero-std
    groups (group_size consecutive rows per prompt), the critic's explained variance."""
    mask, total = exp.actions, scores.total  # sampled tokens only (an episode's observations are not)
    lengths = fold_turns(mask, len(mask) // len(total)).sum(1)  # per completion or episode
    stats: dict[str, float | None] = {
        "reward": total.mean().item(),
        "reward_std": total.std().item() if len(total) > 1 else 0.0,
        "completion_length": lengths.mean().item(),
        "completion_length_min": lengths.min().item(),
        "completion_length_max": lengths.max().item(),
        "eos_fraction": scores.ended_with_eos.float().mean().item(),
        "truncated_fraction": 1.0 - scores.ended_with_eos.float().mean().item(),
        "kl": fold_turns(exp.kl, len(exp) // len(total)).sum(1).mean().item() if exp.kl is not None else None,
        "generated_tokens": float(lengths.sum().item()),
    }
    for j, name in enumerate(reward_names):
        stats[f"reward/{name}"] = scores.raw[j].mean().item()
        stats[f"reward/{name}_std"] = scores.raw[j].std().item() if len(total) > 1 else 0.0
    if group_size > 1:  # groups whose completions all scored the same teach nothing
        groups = total.view(-1, group_size)
        stats["zero_std_group_fraction"] = (groups.std(dim=1) == 0).float().mean().item()
    if exp.old_values is not None:
        stats["explained_variance"] = F.explained_variance(exp.old_values, exp.returns, mask).item()
    return stats


def completion_rows(rollout: Rollout, reward_names: list[str]) -> list[dict[str, Any]]:
    """One row per completion of a rollout: prompt, completion, each function's reward, the total, the mean token
    advantage (a critic-free estimator without a KL penalty gives every token the same one), length, EOS."""
    exp, scores = rollout.experience, rollout.scores
    actions, advantages = (
        fold_turns(x, len(exp) // len(scores.total)) for x in (exp.actions, exp.advantages)
    )
    lengths = actions.sum(1)  # per completion or episode (a history window's turn rows folded)
    advantages = (advantages * actions).sum(1) / lengths.clamp(min=1)
    return [
        {
            "prompt": rollout.prompts[i],
            "completion": rollout.completions[i],
            **{f"reward/{n}": float(scores.raw[j, i]) for j, n in enumerate(reward_names)},
            "reward": float(scores.total[i]),
            "advantage": float(advantages[i]),
            "length": int(lengths[i]),
            "ended_with_eos": bool(scores.ended_with_eos[i]),
            **(
                rollout.extras[i] if rollout.extras else {}
            ),  # episodes: each turn's reply, reward, observation
        }
        for i in range(len(rollout.completions))
    ]


class RunLog:
    """metrics.jsonl and the trackers (rank 0), completions.jsonl and printed samples, the progress bar.

    log_completions: every completion of every rank to completions.jsonl every `logging_steps` steps (gathered
    only on those steps); print_completions_steps: rank 0's first completion on the console every N steps."""

    def __init__(self, accelerator: Accelerator, args: Any, initial_step: int) -> None:
        from tqdm.auto import tqdm

        self.accelerator, self.args = accelerator, args
        self.dir = Path(args.output_dir)
        self.writer = None
        if accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.writer = MetricsWriter(self.dir / "metrics.jsonl", append=initial_step > 0)
            if args.report_to:
                # trackers take scalars only (TensorBoard's hparams reject lists and None): the rest as text
                config = {
                    k: v if isinstance(v, int | float | str | bool) else str(v)
                    for k, v in dataclasses.asdict(args).items()
                }
                accelerator.init_trackers("rlhf", config=config)
        self.bar = tqdm(
            total=args.max_steps,
            initial=initial_step,
            desc="PPO",
            disable=args.disable_tqdm or not accelerator.is_main_process,
        )

    def write(self, row: dict[str, float]) -> None:
        """The row to metrics.jsonl and the trackers, on logging steps (step 0, the starting evaluation, is one)."""
        step = row["step"]
        if self.writer is not None and step % self.args.logging_steps == 0:
            self.writer.write(row)
            if self.args.report_to:
                self.accelerator.log(row, step=step)

    def progress(self, row: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row.get('kl') or 0:.3f}")

    def completions(self, step: int, rollout: Rollout, reward_names: list[str]) -> None:
        """completions.jsonl and tracker tables on logging steps; one sample printed every print_completions_steps."""
        args, acc = self.args, self.accelerator
        write = args.log_completions and step % args.logging_steps == 0
        show = args.print_completions_steps and step % args.print_completions_steps == 0
        if not (write or show):
            return
        rows = completion_rows(rollout, reward_names)
        if write:
            gathered = gather_object(rows) if acc.num_processes > 1 else rows  # a collective: every rank
            if acc.is_main_process:
                self._write_completions(step, gathered)
        if show and acc.is_main_process:
            r = rows[0]
            self.bar.write(
                f"[step {step}] reward {r['reward']:.3f} advantage {r['advantage']:+.3f}"
                f"{'' if r['ended_with_eos'] else ' (no EOS)'}\n  prompt: {str(r['prompt'])[:200]!r}"
                f"\n  completion: {r['completion'][:300]!r}"
            )

    def _write_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        with open(self.dir / "completions.jsonl", "a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        # trackers that take tables (wandb, clearml): the same rows; chat prompts as text
        columns = ["step", *rows[0]]
        table = [
            [step, *(v if isinstance(v, int | float | str) else str(v) for v in r.values())] for r in rows
        ]
        for tracker in self.accelerator.trackers:
            if hasattr(tracker, "log_table"):
                tracker.log_table("completions", columns=columns, data=table, step=step)

    def close(self, plot: bool) -> None:
        """Close the bar and metrics.jsonl, draw the run's plots, finish the trackers. `end_training` is not
        called: it would also destroy the process group, which save_model and the caller's code still need."""
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
            if plot:
                from rlhf.plots import plot_run  # matplotlib only when plotting

                plot_run(self.dir)
        if self.args.report_to:
            for tracker in self.accelerator.trackers:
                tracker.finish()
