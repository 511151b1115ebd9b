"""The math of the over-optimisation frontier (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"):
best-of-n over a pool of samples, its KL, and the two functional forms fitted to gold reward against
d = sqrt(KL(policy || initial policy)). Pure torch and Python, each function checked by hand in
tests/rlhf/test_frontier.py.

Best-of-n here is exact over a finite pool: the m SFT samples of one prompt are taken as the base distribution
(mass 1/m each), best-of-n draws n of them with replacement and keeps the one with the highest proxy score, ties
broken uniformly at random. Grouping the pool into levels of equal proxy score, a level whose cumulative mass
runs from F_prev to F is chosen with probability F^n - F_prev^n, and every sample inside it keeps its share of
the level. So the ratio best-of-n / base is the same for every sample of a level, and

    KL(best-of-n || base) = sum over levels (F^n - F_prev^n) log((F^n - F_prev^n) / (F - F_prev)).

Without ties and with m -> infinity this is the analytic log n - (n - 1) / n (Stiennon et al. 2020, Appendix G);
duplicated completions (a small model repeats itself) make levels heavier and the KL smaller, and a finite pool
caps it at log m.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Form = Literal["bon", "rl"]


def bon_kl_analytic(n: int) -> float:
    """KL(best-of-n || base) in nats for a continuous score without ties: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def best_of_n(proxy: torch.Tensor, gold: torch.Tensor, n: int) -> tuple[float, float, float]:
    """Best-of-n by `proxy` over one prompt's pool, exactly (see the module docstring).

    proxy, gold: (m,) scores of the m pool samples. Returns (KL(best-of-n || pool) in nats, expected proxy score,
    expected gold score) of the best-of-n choice."""
    m = proxy.numel()
    levels, level_of, counts = torch.unique(
        proxy.double(), sorted=True, return_inverse=True, return_counts=True
    )
    mass = counts.double() / m  # (levels,) base mass of each level
    cdf = mass.cumsum(0)
    chosen = cdf.pow(n) - (cdf - mass).clamp(min=0).pow(n)  # (levels,) best-of-n mass of each level
    # the mean gold score inside a level (ties of distinct completions share the level's choice equally)
    gold_sum = torch.zeros_like(mass).index_add_(0, level_of, gold.double())
    level_gold = gold_sum / counts
    kept = chosen > 0
    kl = (chosen[kept] * (chosen[kept] / mass[kept]).log()).sum()
    return float(kl), float((chosen * levels).sum()), float((chosen * level_gold).sum())


def bon_kl_without_ties(m: int, n: int) -> float:
    """KL(best-of-n || pool) for a pool of m distinct scores: what `best_of_n` gives when nothing repeats (the
    finite-pool version of `bon_kl_analytic`)."""
    return best_of_n(torch.arange(m, dtype=torch.float64), torch.zeros(m), n)[0]


def gao_features(d: torch.Tensor, form: Form) -> torch.Tensor:
    """(points, 2) design matrix of gain = alpha * d - beta * d * f(d): f(d) = d for best-of-n, log d for RL
    (d * log d -> 0 as d -> 0, so the initial policy's point is 0 in both columns)."""
    d = d.double()
    if form == "bon":
        shape = d * d
    elif form == "rl":
        shape = torch.where(d > 0, d * d.clamp(min=1e-12).log(), torch.zeros_like(d))
    else:
        raise ValueError(f"form must be 'bon' or 'rl', got {form!r}")
    return torch.stack([d, -shape], dim=1)


def fit_gao(d: torch.Tensor, gain: torch.Tensor, form: Form) -> dict[str, float]:
    """Least-squares alpha, beta of Gao et al.'s form for gold gain over the initial policy against d = sqrt(KL);
    both forms are linear in (alpha, beta). Also returns R^2 (about zero gain) and the fitted peak: best-of-n
    peaks at d* = alpha / (2 beta), RL at d* = exp(alpha / beta - 1); a beta <= 0 means no peak (d* = inf)."""
    x = gao_features(d, form)  # (points, 2)
    y = gain.double()[:, None]  # (points, 1)
    alpha, beta = torch.linalg.lstsq(x, y).solution[:, 0].tolist()
    residual = float(((x @ torch.tensor([[alpha], [beta]], dtype=torch.float64) - y) ** 2).sum())
    total = float((y**2).sum())
    peak_d = math.inf
    # a beta of round-off size (lstsq on an exact line gives ~1e-16, its sign depending on the BLAS path) is 0
    if beta > 1e-9 * max(abs(alpha), 1e-12):
        peak_d = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 700.0))
    peak_gain = (
        float((gao_features(torch.tensor([peak_d]), form)[0] * torch.tensor([alpha, beta])).sum())
        if math.isfinite(peak_d)
        else math.inf
    )
    return {
        "alpha": alpha,
        "beta": beta,
        "r2": 1 - residual / total if total > 0 else math.nan,
        "peak_sqrt_kl": peak_d,
        "peak_gain": peak_gain,
    }


METHOD_NAMES = {"sft": "SFT", "ppo": "PPO", "dpo": "DPO", "bon": "best-of-n"}


def overoptimisation(points: list[dict]) -> dict | None:
    """Where one method's gold reward turns while its proxy still rises. `points` are ordered along the method
    (PPO steps, DPO by KL, best-of-n by n), each with `gold`, `gold_se` (its standard error) and `proxy`. Returns
    the gold peak and the last point past it whose proxy is above the peak's while its gold is below it by more
    than two standard errors of the difference, or None when there is no such point."""
    peak = max(range(len(points)), key=lambda i: points[i]["gold"])
    top = points[peak]
    past = [
        p
        for p in points[peak + 1 :]
        if p["proxy"] > top["proxy"]
        and top["gold"] - p["gold"] > 2 * math.hypot(top["gold_se"], p["gold_se"])
    ]
    return {"peak": top, "last": past[-1]} if past else None


def along(rows: list[dict], method: str) -> list[dict]:
    """One method's points in the order its optimisation goes: PPO by step, best-of-n by n, DPO by KL (a smaller
    beta lets the policy move further)."""
    points = [r for r in rows if r["method"] == method]
    return sorted(points, key=lambda r: r["kl"] if method == "dpo" else r["setting"])


def describe_frontier(rows: list[dict], fits: dict[str, dict[str, float]]) -> str:
    """One paragraph, from the numbers only: which method reaches the highest gold reward and at what KL, where
    each method's proxy keeps rising while its gold falls, and what the fitted forms predict."""
    sft = next(r for r in rows if r["method"] == "sft")
    best = max((r for r in rows if r["method"] != "sft"), key=lambda r: r["gold"])
    text = [
        f"The highest gold reward on the held-out prompts is {best['gold']:.3f} ({best['label']}, against "
        f"{sft['gold']:.3f} for the SFT policy), reached at KL {best['kl']:.2f} nats (sqrt {best['sqrt_kl']:.2f})."
    ]
    for method in ("ppo", "dpo", "bon"):
        points = along(rows, method)
        if not points:
            continue
        name = METHOD_NAMES[method][:1].upper() + METHOD_NAMES[method][1:]  # it starts a sentence
        turn = overoptimisation(points)
        if turn:
            peak, last = turn["peak"], turn["last"]
            text.append(
                f"{name}'s gold reward peaks at {peak['gold']:.3f} ({peak['label']}, KL {peak['kl']:.2f}); past "
                f"it the proxy keeps rising ({peak['proxy']:.3f} -> {last['proxy']:.3f} at {last['label']}, KL "
                f"{last['kl']:.2f}) while the gold falls to {last['gold']:.3f}, more than two standard errors below: "
                "over-optimisation of the reward model."
            )
        else:
            last = points[-1]
            text.append(
                f"{name}'s gold reward does not fall (by two standard errors) while its proxy rises, over KL up to "
                f"{max(r['kl'] for r in points):.2f} ({last['label']}: gold {last['gold']:.3f}, proxy "
                f"{last['proxy']:.3f}, KL {last['kl']:.2f})."
            )
    text += _kl_to_match(rows)
    for method, fit in fits.items():
        where = (
            f"a peak gain of {fit['peak_gain']:.3f} at sqrt(KL) {fit['peak_sqrt_kl']:.2f}"
            if math.isfinite(fit["peak_sqrt_kl"])
            else "no peak (beta <= 0)"
        )
        text.append(
            f"The fitted {METHOD_NAMES[method]} form (alpha {fit['alpha']:.3f}, beta {fit['beta']:.3f}, R^2 "
            f"{fit['r2']:.2f}) predicts {where}."
        )
    return " ".join(text)


def kl_to_reach(points: list[dict], gold: float) -> float | None:
    """The KL at which a curve (points ordered along it) first reaches `gold`, linear in sqrt(KL) between its
    points (the axis Gao et al. plot against); None if it never does."""
    for a, b in zip(points, points[1:]):
        if a["gold"] < gold <= b["gold"]:
            d = a["sqrt_kl"] + (gold - a["gold"]) / (b["gold"] - a["gold"]) * (b["sqrt_kl"] - a["sqrt_kl"])
            return d * d
    return points[0]["kl"] if points and points[0]["gold"] >= gold else None


def _kl_to_match(rows: list[dict]) -> list[str]:
    """How much KL best-of-n spends to match the best gold reward of PPO and of DPO: the KL price of each."""
    bon = along(rows, "bon")
    text = []
    for method in ("ppo", "dpo"):
        points = along(rows, method)
        if not bon or not points:
            continue
        best = max(points, key=lambda r: r["gold"])
        needed = kl_to_reach(bon, best["gold"])
        if needed is not None:
            text.append(
                f"Best-of-n matches {METHOD_NAMES[method]}'s best gold reward ({best['gold']:.3f} at KL "
                f"{best['kl']:.2f}) at KL {needed:.2f}."
            )
    return text
