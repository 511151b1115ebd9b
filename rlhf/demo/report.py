"""The demo's report: PNG plots from the PPO metrics and `report.md` with the numbers and before/after samples."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from classic.runlog import moving_average, plot_curves, read_metrics

SMOOTH = 5  # PPO steps of 32 prompts are noisy; a short moving average shows the trend, the raw line stays


def plot_proxy_vs_gold(path: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> Path:
    """Proxy (reward model) and gold reward per PPO step on two y-axes (their scales differ), with the SFT
    policy's held-out levels as dashed lines: the over-optimisation picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax_proxy = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    ax_gold = ax_proxy.twinx()
    lines = []
    for ax, key, label, color, sft_key in (
        (ax_proxy, "reward/rm", "proxy: reward model score", "C0", "proxy_reward_sft"),
        (ax_gold, "reward/gold_judge", "gold: lexicon judge", "C3", "gold_reward_sft"),
    ):
        values = [r.get(key, math.nan) for r in rows]
        ax.plot(steps, values, color=color, alpha=0.25)
        (line,) = ax.plot(
            steps, moving_average(values, SMOOTH), color=color, label=f"{label} (moving avg {SMOOTH})"
        )
        lines.append(line)
        if sft_key in summary:
            lines.append(
                ax.axhline(
                    summary[sft_key], color=color, ls="--", lw=1, label=f"{label.split(':')[0]}: SFT policy"
                )
            )
    ax_proxy.set_xlabel("PPO step")
    ax_proxy.set_ylabel("proxy reward (reward model score)", color="C0")
    ax_gold.set_ylabel("gold reward (in [-1, 1])", color="C3")
    ax_gold.set_ylim(-1.05, 1.05)
    ax_proxy.set_title("PPO against the learned reward model: proxy vs gold reward")
    ax_proxy.grid(alpha=0.3)
    ax_proxy.legend(handles=lines, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


STYLE = {"ppo": ("C0", "o", "PPO (checkpoints along training)"), "dpo": ("C2", "s", "DPO (one point per beta)"),
         "bon": ("C3", "^", "best-of-n (reward model picks)")}  # fmt: skip


def plot_frontier(path: Path, frontier: dict[str, Any]) -> Path:
    """Gold (left) and proxy (right) reward against sqrt(KL(policy || SFT)) for PPO, DPO and best-of-n, as in Gao
    et al. 2022, with the fitted gold forms dashed and the SFT policy at the origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from rlhf.demo.frontier import along, gao_features

    rows, fits = frontier["rows"], frontier["fits"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    sft = next(r for r in rows if r["method"] == "sft")
    for ax, key, title in zip(
        axes, ("gold", "proxy"), ("gold reward (lexicon judge)", "proxy reward (reward model)")
    ):
        ax.plot([0], [sft[key]], "k*", ms=10, label="SFT policy")
        for method, (color, marker, label) in STYLE.items():
            points = along(rows, method)
            line = points if method == "bon" else [sft, *points]  # PPO and DPO start from the SFT policy
            ax.plot(
                [r["sqrt_kl"] for r in line],
                [r[key] for r in line],
                color=color,
                marker=marker,
                label=label,
            )
            for r in points if method != "ppo" else points[-1:]:
                ax.annotate(
                    _short(r), (r["sqrt_kl"], r[key]), fontsize=7, xytext=(3, -9), textcoords="offset points"
                )
            if key == "gold" and method in fits:
                d = torch.linspace(0, max(r["sqrt_kl"] for r in points) * 1.15, 80)
                coef = torch.tensor([fits[method]["alpha"], fits[method]["beta"]], dtype=torch.float64)
                fitted = fits[method]["start_gold"] + gao_features(d, fits[method]["form"]) @ coef
                ax.plot(d, fitted, color=color, ls="--", lw=1)
        ax.set_xlabel("sqrt(KL(policy || SFT)), KL in nats per completion")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    # within the gold judge's range [-1, 1] (a fit may run past it), from just below the lowest point
    axes[0].set_ylim(max(-1.05, min(r["gold"] for r in rows) - 0.15), 1.05)
    axes[0].set_title("gold reward (dashed: Gao et al. fits)")
    axes[1].set_title("proxy reward")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _short(row: dict[str, Any]) -> str:
    return {"ppo": f"step {row['setting']}", "dpo": f"beta {row['setting']:g}", "bon": f"n={row['setting']}"}[
        row["method"]
    ]


def frontier_lines(frontier: dict[str, Any]) -> list[str]:
    """The report's frontier section: plot, table, fits and the paragraph."""
    lines = [
        "## PPO, DPO and best-of-n on one frontier",
        "",
        "![gold and proxy reward against sqrt(KL)](frontier.png)",
        "",
        f"Held-out prompts: {frontier['n_prompts']}. KL(policy || SFT) in nats per completion, from samples of the "
        "policy (PPO, DPO); exact over the pool of SFT samples per prompt for best-of-n "
        f"({frontier['bon_pool_repeats']:.1%} of pool samples repeat one of their prompt's pool), next to the "
        "analytic log n - (n-1)/n.",
        "",
        "| policy | KL | sqrt(KL) | gold reward | proxy reward | analytic KL |",
        "|---|---|---|---|---|---|",
    ]
    for r in frontier["rows"]:
        analytic = f"{r['kl_analytic']:.3f}" if "kl_analytic" in r else ""
        lines.append(
            f"| {r['label']} | {r['kl']:.3f} | {r['sqrt_kl']:.3f} | {r['gold']:.3f} ± {r['gold_se']:.3f} "
            f"| {r['proxy']:.3f} | {analytic} |"
        )
    lines += [
        "",
        "| fit (gold gain vs d = sqrt(KL)) | form | alpha | beta | R^2 | peak at d |",
        "|---|---|---|---|---|---|",
    ]
    for method, fit in frontier["fits"].items():
        form = "d (alpha - beta d)" if fit["form"] == "bon" else "d (alpha - beta log d)"
        lines.append(
            f"| {method} | {form} | {fit['alpha']:.4f} | {fit['beta']:.4f} | {fit['r2']:.3f} "
            f"| {fit['peak_sqrt_kl']:.2f} |"
        )
    accuracies = ", ".join(
        f"beta {b['beta']:g}: {b['heldout_accuracy']:.3f}" for b in frontier.get("dpo", [])
    )
    lines += [
        "",
        f"DPO's implicit reward accuracy on the reward model's held-out pairs: {accuracies}.",
        "",
        frontier["paragraph"],
        "",
    ]
    return lines


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|").replace("\n", " ") or "*(empty)*"


def _plots(run_dir: Path, summary: dict[str, Any]) -> None:
    """The report's PNGs from the PPO stage's metrics.jsonl (and the frontier's, when it ran)."""
    if "frontier" in summary:
        plot_frontier(run_dir / "frontier.png", summary["frontier"])
    # training steps only (the step-0 row holds the starting model's evaluation alone)
    rows = [r for r in read_metrics(run_dir / "ppo" / "metrics.jsonl") if "reward" in r]
    plot_proxy_vs_gold(run_dir / "reward_proxy_vs_gold.png", rows, summary)
    plot_curves(
        run_dir / "kl.png",
        rows,
        "step",
        ["kl"],
        "KL(policy || SFT reference) per completion during PPO",
        "KL (nats, k1 estimate summed over tokens)",
        labels=["KL"],
    )
    plot_curves(
        run_dir / "completion_length.png",
        rows,
        "step",
        ["completion_length"],
        "Completion length during PPO",
        "tokens per completion",
        labels=["mean completion length"],
    )


def write_report(run_dir: Path, summary: dict[str, Any], cfg: Any) -> Path:
    """report.md (and its plots) in `run_dir` from the summary and the held-out samples."""
    _plots(run_dir, summary)
    samples = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").open()]
    s = summary
    sec = s["seconds"]
    lines = [
        "# RLHF demo report",
        "",
        "Task: product reviews from a template grammar; the *gold judge* scores a completion by its sentiment "
        "words ((#positive - #negative) / #sentiment words, in [-1, 1]). The reward model learnt it from "
        f"{cfg.n_pairs} preference pairs with {cfg.label_noise:.0%} of labels flipped; PPO optimised the reward "
        f"model with a KL penalty (beta {cfg.kl_coef}) to the SFT policy. Seed {s['seed']}.",
        "",
        "| | SFT policy | PPO policy |",
        "|---|---|---|",
        f"| gold reward (held-out prompts) | {s['gold_reward_sft']:.3f} | {s['gold_reward_ppo']:.3f} |",
        f"| proxy reward (reward model) | {s['proxy_reward_sft']:.3f} | {s['proxy_reward_ppo']:.3f} |",
        f"| completion length (tokens) | {s['completion_length_sft']:.1f} | {s['completion_length_ppo']:.1f} |",
        f"| fraction ending with EOS | {s['eos_fraction_sft']:.2f} | {s['eos_fraction_ppo']:.2f} |",
        "",
        f"- KL(PPO || SFT) on held-out prompts: {s['kl_ppo']:.2f} nats per completion.",
        f"- PPO beats SFT by the gold judge on {s['gold_win_rate_ppo_vs_sft']:.0%} of the "
        f"{s['n_eval_prompts']} held-out prompts (same prompts, same sampling seed; ties count half).",
        f"- Reward model: held-out pairwise accuracy {s['rm_accuracy']:.3f} against noise-free gold labels.",
        "- Seconds per stage: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sec.items() if k != "total")
        + f"; total {sec['total']:.1f} ({s['num_threads']} torch threads).",
        "",
        *_plot_section(run_dir),
        *(frontier_lines(s["frontier"]) if "frontier" in s else []),
        "## Samples: the same held-out prompts, before (SFT) and after (PPO)",
        "",
        "| prompt | SFT completion | gold / proxy | PPO completion | gold / proxy |",
        "|---|---|---|---|---|",
    ]
    for row in samples[: cfg.n_report_samples]:
        a, b = row["sft"], row["ppo"]
        lines.append(
            f"| {_cell(row['prompt'])} | {_cell(a['completion'])} | {a['gold']:.2f} / {a['proxy']:.2f} "
            f"| {_cell(b['completion'])} | {b['gold']:.2f} / {b['proxy']:.2f} |"
        )
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot_section(run_dir: Path) -> list[str]:
    return [
        "## Plots",
        "",
        "![proxy vs gold reward](reward_proxy_vs_gold.png)",
        "",
        "Proxy (left axis) and gold (right axis) reward of the PPO samples at each step; dashed lines are the SFT "
        "policy's held-out levels. When the proxy keeps rising while the gold reward stalls, PPO is exploiting "
        "the reward model rather than the task.",
        "",
        "![KL](kl.png) ![completion length](completion_length.png)",
        "",
        *(
            [
                "![held-out evaluation during PPO](ppo/eval.png)",
                "",
                "Greedy completions for the held-out prompts, scored every eighth of the run (step 0 = the SFT "
                "policy) by the reward model (`eval/reward/rm`) and the gold judge (`eval/reward/gold_judge`).",
                "",
            ]
            if (run_dir / "ppo" / "eval.png").is_file()
            else []
        ),
    ]
