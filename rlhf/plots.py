"""Plots of a run's `metrics.jsonl`: what users watch to catch reward hacking and collapse.

Written by `PPOTrainer.train` at the end of every run (`plot_metrics`), and on demand:

    rlhf plot runs/mine            # or: python -m rlhf plot runs/mine
"""

from __future__ import annotations

from pathlib import Path

from classic.runlog import plot_curves, read_metrics


def plot_run(run_dir: str | Path) -> list[Path]:
    """PNGs next to `run_dir/metrics.jsonl`: reward (total and per reward function), KL and beta, entropy,
    completion length, the PPO losses and, when the run evaluated, the eval metrics. Returns the written paths."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics}: no metrics.jsonl (is {run_dir} the output_dir of a run?)")
    rows = read_metrics(metrics)
    if not rows:
        raise ValueError(f"{metrics}: no rows yet")
    keys = sorted({k for r in rows for k in r})
    smooth = 5 if len(rows) >= 20 else 1
    plots = [
        (
            "reward.png",
            ["reward"] + [k for k in keys if k.startswith("reward/") and not k.endswith("_std")],
            "Reward",
            "score",
        ),
        ("kl.png", ["kl"], "KL to the reference per completion", "nats"),
        ("kl_coef.png", ["kl_coef"], "KL coefficient (beta)", "beta"),
        ("entropy.png", ["entropy"], "Policy entropy per token during the update", "nats"),
        ("completion_length.png", ["completion_length"], "Completion length", "tokens"),
        ("losses.png", ["policy_loss", "value_loss", "kl_loss"], "Losses", "loss"),
    ]
    written = []
    for name, ys, title, ylabel in plots:
        ys = [y for y in ys if y in keys]
        if ys:
            written.append(plot_curves(run_dir / name, rows, "step", ys, title, ylabel, smooth=smooth))
    # evaluations are few and each already averages the whole held-out set: drawn unsmoothed
    evals = [k for k in keys if k.startswith("eval/reward") and not k.endswith("_std")]
    if evals:
        title = "Held-out evaluation (every reward function, weight 0 included)"
        written.append(plot_curves(run_dir / "eval.png", rows, "step", evals, title, "score"))
    return written
