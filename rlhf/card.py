"""The model card `save_model` writes next to the weights: a `README.md` in the format the Hugging Face Hub shows
(YAML metadata, then Markdown), naming the base model, the estimator and its settings, the data, the run's final
and eval numbers and its plots, so that a model folder says what it is and how it was made.

Metadata goes through `huggingface_hub.ModelCardData` (the Hub's own schema); the body is plain Markdown.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

# the PPOConfig fields a reader needs to know what was trained; the full config is folded below them
KEY_SETTINGS = (
    "advantage_estimator",
    "max_steps",
    "rollout_batch_size",
    "num_generations",
    "mini_batch_size",
    "num_ppo_epochs",
    "learning_rate",
    "loss_type",
    "clip_eps",
    "kl_coef",
    "kl_estimator",
    "kl_in_loss",
    "max_new_tokens",
    "temperature",
)
# the training metrics shown, in this order, when the run logged them
KEY_METRICS = ("reward", "kl", "entropy", "completion_length", "eos_fraction", "zero_std_group_fraction")
PLOTS = ("reward.png", "eval.png", "kl.png", "entropy.png", "completion_length.png", "losses.png")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.4g}"  # + 0.0: no '-0'
    return str(value)


def model_card(
    args: Any,
    base_model: str | None,
    reward_names: list[str],
    reward_weights: list[float],
    rows: list[dict[str, Any]],
    dataset_name: str | None = None,
    dataset_size: int | None = None,
    eval_size: int | None = None,
    best: tuple[str, float] | None = None,
    plots: list[str] | None = None,
    peft: bool = False,
    world_size: int = 1,
    engine: str = "ddp",
    model_name: str | None = None,
    load_from: str = "path/to/this/folder",
    weights_from: str | None = None,
) -> str:
    """The card's text. `rows` are the run's metrics.jsonl rows (training steps and, with eval, eval/* keys)."""
    from huggingface_hub import ModelCard, ModelCardData

    estimator = args.advantage_estimator
    data = ModelCardData(
        base_model=base_model or None,
        library_name="peft" if peft else "transformers",
        pipeline_tag="text-generation",
        tags=["rlbook", "rlhf", estimator] + (["lora"] if peft else []),
        datasets=[dataset_name] if dataset_name else None,
    )
    steps = [r for r in rows if r.get("step", 0) > 0 and "reward" in r]
    evals = [r for r in rows if "eval/reward" in r]
    name = model_name or "Model"
    lines = [
        f"# {name}",
        "",
        f"Fine-tuned from {f'`{base_model}`' if base_model else 'a model passed in memory'} with "
        f"rlbook's `PPOTrainer` (`rlhf` package), advantage estimator **{estimator}**"
        f"{' (LoRA adapters)' if peft else ''}, for {steps[-1]['step'] if steps else 0} steps on "
        f"{world_size} process{'es' if world_size > 1 else ''} ({engine}).",
        "",
        _files(args, peft),
        "",
        "## Training",
        "",
        f"- Prompts: {dataset_name or 'a local dataset'}"
        + (f", {dataset_size} rows" if dataset_size is not None else "")
        + (f"; held-out evaluation on {eval_size} prompts" if eval_size else ""),
        "- Rewards: "
        + ", ".join(f"`{n}` (weight {_fmt(float(w))})" for n, w in zip(reward_names, reward_weights)),
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(getattr(args, k))} |" for k in KEY_SETTINGS),
        "",
    ]
    lines += _results(args, steps, evals, best, weights_from)
    if plots:
        lines += ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]
    lines += _use(args, peft)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)).content


def _files(args: Any, peft: bool) -> str:
    """One line: what the folder holds and, with push_to_hub, what went to the Hub (rlhf.export.push_folder)."""
    from rlhf.advantages import ESTIMATORS
    from rlhf.checkpoint import RUN_LOGS

    critic = ESTIMATORS[args.advantage_estimator].needs_critic
    line = (
        f"Files: the {'LoRA adapter' if peft else 'weights'} and config, the tokenizer, this card and its plots"
        + (", the critic (`critic/`)" if critic else "")
        + "."
    )
    logs = ", ".join(RUN_LOGS)
    if args.push_to_hub and getattr(args, "hub_upload_logs", False):
        line += f" Uploaded to the Hub with the run's logs ({logs}: every training and eval prompt and completion)."
    elif args.push_to_hub:
        line += (
            f" Uploaded to the Hub: these only; the run's logs ({logs}) and checkpoints were not uploaded."
        )
    return line


def _results(
    args: Any,
    steps: list[dict[str, Any]],
    evals: list[dict[str, Any]],
    best: tuple[str, float] | None,
    weights_from: str | None,
) -> list[str]:
    """The Results section: first and last training step, first and last evaluation, the best checkpoint."""
    lines: list[str] = []
    if steps:
        first, last = steps[0], steps[-1]
        keys = [k for k in KEY_METRICS if k in last] + sorted(
            k for k in last if k.startswith("reward/") and not k.endswith("_std")
        )
        lines += [
            "## Results",
            "",
            f"Training metrics, step {first['step']} and step {last['step']}:",
            "",
            "| metric | first step | last step |",
            "|---|---|---|",
            *(f"| {k} | {_fmt(first.get(k, ''))} | {_fmt(last[k])} |" for k in keys),
            "",
        ]
    if evals:
        first, last = evals[0], evals[-1]
        keys = [k for k in last if k.startswith("eval/") and not k.endswith("_std")]
        lines += [
            f"Evaluation ({'greedy' if args.eval_temperature == 0 else f'temperature {args.eval_temperature}'}, "
            f"{args.eval_num_generations} completion(s) per prompt), step {first['step']} and step {last['step']}:",
            "",
            f"| metric | step {first['step']} | step {last['step']} |",
            "|---|---|---|",
            *(f"| {k} | {_fmt(first[k])} | {_fmt(last[k])} |" for k in keys),
            "",
        ]
    if best is not None:
        lines += [f"Best checkpoint by `{args.metric_for_best_model}`: `{best[0]}` ({_fmt(best[1])}).", ""]
    if weights_from is not None:
        lines += [
            f"The weights in this folder are `{weights_from}`'s, loaded after the last step "
            "(`load_best_model_at_end`), not the last step's.",
            "",
        ]
    return lines


def _use(args: Any, peft: bool) -> list[str]:
    """How to load the folder, and the full config folded away."""
    load = (
        "from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(path)"
        if peft
        else "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(path)"
    )
    config = yaml.safe_dump(dataclasses.asdict(args), sort_keys=False).strip()
    return [
        "## Use",
        "",
        "```python",
        load,
        "```",
        "",
        "<details><summary>Full configuration (PPOConfig)</summary>",
        "",
        "```yaml",
        config,
        "```",
        "",
        "</details>",
        "",
    ]
