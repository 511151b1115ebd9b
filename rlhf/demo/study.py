"""The demo's over-optimisation study (Gao et al. 2022): the `dpo` and `frontier` stages.

dpo:      DPO with TRL's DPOTrainer from the SFT policy at each of `dpo_betas`, on the reward model's own preference
          pairs (same prompts, same 10% flipped labels); the implicit reward's accuracy on the RM's held-out pairs.
frontier: every policy on one axis. PPO (its checkpoints along training and the final model), each DPO beta and
          best-of-n from the SFT policy with the reward model as the selector, each scored by the gold judge and
          the proxy on the held-out prompts, against KL(policy || SFT); Gao et al.'s forms fitted to the gold
          curves; a table, a plot and a paragraph for the report (rlhf/demo/report.py).

KL is measured the same way for PPO, DPO and the SFT point: samples of the policy at the demo's temperature, the
sum over completion tokens of log pi - log pi_sft (both at that temperature), averaged (stages.sampled_kl).
Best-of-n's KL is exact over a pool of SFT samples per prompt (rlhf/demo/frontier.py), next to the analytic
log n - (n - 1) / n.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

DPO_SETTINGS = ("dpo_betas", "dpo_steps", "dpo_batch_size", "dpo_learning_rate")
FRONTIER_SETTINGS = ("bon_n", "bon_pool_size", "frontier_samples", "n_eval_prompts")


def beta_dir(run: Any, beta: float) -> Path:
    return run.stage("dpo") / f"beta_{beta:g}"


def run_dpo(cfg: Any, run: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.demo import corpus, stages
    from rlhf.demo.pipeline import log, model_sources

    t0 = time.perf_counter()
    sft = model_sources(cfg, run)["sft"]
    train_prompts, eval_prompts = corpus.split_prompts(cfg.seed)
    # the reward model's pairs (same seed, same flipped labels) and its held-out pairs (clean labels)
    pairs = corpus.make_preference_pairs(
        train_prompts, cfg.n_pairs, seed=cfg.seed + 1, label_noise=cfg.label_noise
    )
    held_out = corpus.make_preference_pairs(
        eval_prompts, cfg.n_eval_pairs, seed=cfg.seed + 2, label_noise=0.0
    )
    tokenizer = AutoTokenizer.from_pretrained(sft)
    reference = AutoModelForCausalLM.from_pretrained(sft)
    betas = []
    for beta in cfg.dpo_betas:
        out = beta_dir(run, beta)
        started = time.perf_counter()
        train_accuracy = stages.train_dpo(cfg, sft, tokenizer, pairs, beta, out)
        policy = AutoModelForCausalLM.from_pretrained(out)
        accuracy = stages.implicit_reward_accuracy(policy, reference, tokenizer, held_out)
        log(
            f"[dpo] beta {beta:g}: implicit reward accuracy {accuracy:.3f} on {len(held_out['prompt'])} held-out pairs"
        )
        betas.append(
            {
                "beta": beta,
                "heldout_accuracy": accuracy,
                "train_accuracy_noisy": train_accuracy,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    settings = {name: getattr(cfg, name) for name in DPO_SETTINGS}
    return run.finish("dpo", time.perf_counter() - t0, betas=betas, settings=settings)


def evaluate_policy(
    policy: Any, sft: Any, tokenizer: Any, rm: Any, prompts: list[str], cfg: Any
) -> dict[str, float]:
    """Gold and proxy reward and KL(policy || SFT) of `policy`'s samples for `prompts` (each `frontier_samples`
    times), drawn at the demo's temperature with one seed for every policy."""
    from rlhf.demo import corpus, stages

    repeated = [p for p in prompts for _ in range(cfg.frontier_samples)]
    texts, token_ids = stages.sample(
        policy, tokenizer, repeated, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed + 11
    )
    gold = corpus.gold_judge(repeated, texts)
    return {
        "kl": stages.sampled_kl(policy, sft, token_ids, cfg.temperature),
        "gold": statistics.mean(gold),
        "gold_se": statistics.stdev(gold) / math.sqrt(len(gold)) if len(gold) > 1 else math.nan,
        "proxy": statistics.mean(rm(repeated, texts)),
        "length": statistics.mean(len(r) for _, r in token_ids),
    }


def policy_points(cfg: Any, run: Any, sft: Any, tokenizer: Any, rm: Any, prompts: list[str]) -> list[dict]:
    """The SFT point, PPO's checkpoints along training and its final model, and each DPO beta, evaluated alike."""
    from transformers import AutoModelForCausalLM

    from rlhf.checkpoint import PREFIX, list_checkpoints
    from rlhf.demo import stages
    from rlhf.demo.pipeline import model_sources

    sources = model_sources(cfg, run)
    policies: list[tuple[str, Any, str, Any]] = [("sft", 0, "SFT policy", lambda: sft)]
    steps = sorted(int(c.name[len(PREFIX) :]) for c in list_checkpoints(run.stage("ppo")))
    for step in (s for s in steps if s < cfg.ppo_steps):
        ckpt = run.stage("ppo") / f"{PREFIX}{step}"
        policies.append(
            ("ppo", step, f"PPO step {step}", lambda c=ckpt: stages.load_checkpoint_policy(sources["sft"], c))
        )
    final = cfg.ppo_steps
    policies.append(
        ("ppo", final, f"PPO step {final}", lambda: AutoModelForCausalLM.from_pretrained(sources["ppo"]))
    )
    for beta in cfg.dpo_betas:
        policies.append(
            (
                "dpo",
                beta,
                f"DPO beta {beta:g}",
                lambda b=beta: AutoModelForCausalLM.from_pretrained(beta_dir(run, b)),
            )
        )
    rows = []
    for method, setting, label, load in policies:
        numbers = evaluate_policy(load(), sft, tokenizer, rm, prompts, cfg)
        rows.append({"method": method, "setting": setting, "label": label, **numbers})
    return rows


def best_of_n_points(
    cfg: Any, sft: Any, tokenizer: Any, rm: Any, prompts: list[str]
) -> tuple[list[dict], float]:
    """Best-of-n for every n in `bon_n`, exact over a pool of `bon_pool_size` SFT samples per prompt (the reward
    model selects, the gold judge scores), averaged over prompts; and the fraction of pool samples that repeat an
    earlier sample of their prompt (ties that make the measured KL smaller than the analytic one)."""
    import torch

    from rlhf.demo import corpus, stages
    from rlhf.demo.frontier import best_of_n, bon_kl_analytic

    m = cfg.bon_pool_size
    repeated = [p for p in prompts for _ in range(m)]
    # one prompt per generation batch: no padding, and the pool of a prompt is one batch
    texts, _ = stages.sample(
        sft, tokenizer, repeated, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed + 13, batch_size=m
    )
    proxy = torch.tensor(rm(repeated, texts)).view(len(prompts), m)  # (prompts, pool)
    gold = torch.tensor(corpus.gold_judge(repeated, texts)).view(len(prompts), m)  # (prompts, pool)
    repeats = sum(m - len(set(texts[i * m : (i + 1) * m])) for i in range(len(prompts))) / len(texts)
    rows = []
    for n in cfg.bon_n:
        per_prompt = [best_of_n(proxy[i], gold[i], n) for i in range(len(prompts))]
        kl, proxy_mean, gold_mean = (statistics.mean(values) for values in zip(*per_prompt))
        # the pool is exact per prompt: what varies is which prompts were drawn
        gold_se = (
            statistics.stdev(g for _, _, g in per_prompt) / math.sqrt(len(prompts))
            if len(prompts) > 1
            else math.nan
        )
        rows.append(
            {
                "method": "bon", "setting": n, "label": f"best-of-{n}", "kl": kl, "gold": gold_mean,
                "gold_se": gold_se, "proxy": proxy_mean, "kl_analytic": bon_kl_analytic(n),
            }
        )  # fmt: skip
    return rows, repeats


def fit_curves(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Gao et al.'s forms fitted to each method's gold gain over its starting point against d = sqrt(KL):
    best-of-n d (alpha - beta d) (gain over best-of-1), PPO and DPO d (alpha - beta log d) (gain over SFT)."""
    import torch

    from rlhf.demo.frontier import fit_gao

    sft_gold = next(r["gold"] for r in rows if r["method"] == "sft")
    fits = {}
    for method, form in (("ppo", "rl"), ("dpo", "rl"), ("bon", "bon")):
        points = [r for r in rows if r["method"] == method]
        if len(points) < 2:
            continue  # two coefficients need two points
        start = (
            next((r["gold"] for r in points if r["setting"] == 1), sft_gold) if method == "bon" else sft_gold
        )
        d = torch.tensor([r["sqrt_kl"] for r in points])
        gain = torch.tensor([r["gold"] - start for r in points])
        fits[method] = {"form": form, "start_gold": start, **fit_gao(d, gain, form)}
    return fits


def run_frontier(cfg: Any, run: Any) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.demo import corpus, stages
    from rlhf.demo.pipeline import model_sources

    t0 = time.perf_counter()
    sources = model_sources(cfg, run)
    prompts = corpus.split_prompts(cfg.seed)[1][: cfg.n_eval_prompts]
    sft = AutoModelForCausalLM.from_pretrained(sources["sft"])
    tokenizer = AutoTokenizer.from_pretrained(sources["sft"])
    rm = stages.load_eos_reward_model(sources["rm"])
    rows = policy_points(cfg, run, sft, tokenizer, rm, prompts)
    bon_rows, repeats = best_of_n_points(cfg, sft, tokenizer, rm, prompts)
    rows += bon_rows
    for row in rows:
        row["kl"] = max(row["kl"], 0.0)  # a Monte Carlo KL near 0 can come out slightly negative
        row["sqrt_kl"] = math.sqrt(row["kl"])
    fits = fit_curves(rows)
    result = {
        "rows": rows,
        "fits": fits,
        "bon_pool_repeats": repeats,
        "n_prompts": len(prompts),
        "settings": {name: getattr(cfg, name) for name in FRONTIER_SETTINGS},
    }
    out = run.stage("frontier")
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.json").write_text(json.dumps(result, indent=2))
    best = max((r for r in rows if r["method"] != "sft"), key=lambda r: r["gold"])
    return run.finish(
        "frontier",
        time.perf_counter() - t0,
        best=best["label"],
        best_gold=best["gold"],
        best_kl=best["kl"],
        settings=result["settings"],
    )


def frontier_summary(run: Any) -> dict[str, Any]:
    """What summary.json holds of the study: the frontier table, the fits, the paragraph, and DPO's held-out
    implicit reward accuracy per beta."""
    from rlhf.demo.frontier import describe_frontier

    result = json.loads((run.stage("frontier") / "frontier.json").read_text())
    result["paragraph"] = describe_frontier(
        result["rows"], result["fits"]
    )  # written from the numbers, each time
    result["dpo"] = (run.done("dpo") or {}).get("betas", [])
    return result
