"""The over-optimisation frontier's math (rlhf/demo/frontier.py), checked against numbers worked out by hand and
against a slow enumeration of every best-of-n draw."""

import itertools
import math

import pytest
import torch

from rlhf.demo.frontier import (
    best_of_n,
    bon_kl_analytic,
    bon_kl_without_ties,
    describe_frontier,
    fit_gao,
    kl_to_reach,
    overoptimisation,
)


def test_analytic_kl_by_hand():
    assert bon_kl_analytic(1) == 0.0
    assert bon_kl_analytic(2) == pytest.approx(math.log(2) - 0.5)  # 0.19315
    assert bon_kl_analytic(64) == pytest.approx(4.158883 - 0.984375, abs=1e-6)


def test_best_of_2_of_four_distinct_samples_by_hand():
    """Pool 1, 2, 3, 4 (mass 1/4 each); best of 2 with replacement picks the k-th smallest with probability
    (k/4)^2 - ((k-1)/4)^2 = 1/16, 3/16, 5/16, 7/16."""
    chosen = [1 / 16, 3 / 16, 5 / 16, 7 / 16]
    kl, proxy, gold = best_of_n(torch.tensor([3.0, 1.0, 4.0, 2.0]), torch.tensor([30.0, 10.0, 40.0, 20.0]), 2)
    assert kl == pytest.approx(sum(p * math.log(p / 0.25) for p in chosen))  # 0.1889
    assert proxy == pytest.approx((1 + 2 * 3 + 3 * 5 + 4 * 7) / 16)  # 3.125
    assert gold == pytest.approx(31.25)


def test_ties_make_one_level_by_hand():
    """Pool 1, 1, 2, 2: two levels of mass 1/2; best of 2 picks the upper one with probability 1 - 1/4."""
    kl, proxy, gold = best_of_n(torch.tensor([1.0, 1.0, 2.0, 2.0]), torch.tensor([0.0, 1.0, 5.0, 5.0]), 2)
    assert kl == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))  # 0.1308
    assert proxy == pytest.approx(0.25 * 1 + 0.75 * 2)
    assert gold == pytest.approx(0.25 * 0.5 + 0.75 * 5)  # a level's gold is its mean


@pytest.mark.parametrize("n", [1, 2, 3])
def test_best_of_n_equals_enumerating_every_draw(n):
    """Every ordered draw of n pool indices (with replacement), the highest proxy kept, ties split evenly: the
    resulting distribution over distinct completions gives the same KL and expectations."""
    texts = ["a", "a", "b", "c", "d"]  # "a" sampled twice: a tie
    score = {"a": 0.5, "b": -1.0, "c": 2.0, "d": 0.1}
    gold_of = {"a": 1.0, "b": -1.0, "c": 0.0, "d": 0.5}
    base = {t: texts.count(t) / len(texts) for t in score}
    picked = dict.fromkeys(score, 0.0)
    draws = list(itertools.product(range(len(texts)), repeat=n))
    for draw in draws:
        best = max(score[texts[i]] for i in draw)
        winners = [texts[i] for i in draw if score[texts[i]] == best]
        for w in winners:
            picked[w] += 1 / len(winners) / len(draws)
    kl_slow = sum(p * math.log(p / base[t]) for t, p in picked.items() if p > 0)
    proxy = torch.tensor([score[t] for t in texts])
    gold = torch.tensor([gold_of[t] for t in texts])
    kl, proxy_mean, gold_mean = best_of_n(proxy, gold, n)
    assert kl == pytest.approx(kl_slow, abs=1e-12)
    assert proxy_mean == pytest.approx(sum(p * score[t] for t, p in picked.items()))
    assert gold_mean == pytest.approx(sum(p * gold_of[t] for t, p in picked.items()))


def test_a_large_pool_without_ties_gives_the_analytic_kl():
    for n in (2, 16, 64):
        assert bon_kl_without_ties(8192, n) == pytest.approx(bon_kl_analytic(n), abs=2e-4)
    # a finite pool lowers it (capped at log m); a pool 4x the largest n keeps it within 0.003
    assert bon_kl_analytic(64) - 0.003 < bon_kl_without_ties(256, 64) < bon_kl_analytic(64)
    assert bon_kl_without_ties(64, 64) < math.log(64)


def test_fits_recover_gao_coefficients_by_hand():
    d = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])
    fit = fit_gao(d, d * (0.8 - 0.2 * d), "bon")
    assert (fit["alpha"], fit["beta"], fit["r2"]) == pytest.approx((0.8, 0.2, 1.0))
    # d (alpha - beta d) peaks at alpha / (2 beta) = 2 with gain alpha^2 / (4 beta) = 0.8
    assert (fit["peak_sqrt_kl"], fit["peak_gain"]) == pytest.approx((2.0, 0.8))
    log_d = torch.where(d > 0, d.log(), torch.zeros_like(d))
    fit = fit_gao(d, d * (0.5 - 0.25 * log_d), "rl")
    assert (fit["alpha"], fit["beta"]) == pytest.approx((0.5, 0.25))
    # d (alpha - beta log d) peaks at exp(alpha / beta - 1) = e, where the gain is beta * d = e / 4
    assert (fit["peak_sqrt_kl"], fit["peak_gain"]) == pytest.approx((math.e, math.e / 4))
    assert fit_gao(d, 0.3 * d, "bon")["peak_sqrt_kl"] == math.inf  # beta 0: still rising
    # a beta of round-off size is 0 whatever its sign (lstsq gave +1e-16 in one venv and -3e-32 in another)
    d64 = d.double()
    assert fit_gao(d64, d64 * (0.3 - 1e-14 * d64), "bon")["peak_sqrt_kl"] == math.inf


def point(method, setting, kl, gold, proxy, se=0.01):
    return {
        "method": method, "setting": setting, "label": f"{method} {setting}", "kl": kl, "sqrt_kl": math.sqrt(kl),
        "gold": gold, "gold_se": se, "proxy": proxy,
    }  # fmt: skip


def test_overoptimisation_needs_a_rising_proxy_and_a_gold_drop_beyond_noise():
    rising = [point("ppo", 1, 1, 0.2, 1.0), point("ppo", 2, 2, 0.5, 2.0), point("ppo", 3, 3, 0.4, 3.0)]
    turn = overoptimisation(rising)
    assert turn["peak"]["setting"] == 2 and turn["last"]["setting"] == 3
    # the same drop within two standard errors (0.1 > 2 * hypot(0.05, 0.05) = 0.141 is false): no claim
    noisy = [dict(p, gold_se=0.05) for p in rising]
    assert overoptimisation(noisy) is None
    # gold falls but the proxy falls too: the policy got worse, not the proxy over-optimised
    assert overoptimisation([point("ppo", 1, 1, 0.5, 2.0), point("ppo", 2, 2, 0.3, 1.5)]) is None


def test_the_paragraph_comes_from_the_numbers():
    rows = [
        point("sft", 0, 0.0, 0.0, 0.0),
        point("ppo", 10, 1.0, 0.6, 1.0),
        point("ppo", 20, 4.0, 0.4, 2.0),
        point("dpo", 0.1, 9.0, 0.3, 0.5),
        point("bon", 1, 0.0, 0.0, 0.0),
        point("bon", 4, 0.64, 0.7, 1.2),
    ]
    text = describe_frontier(
        rows, {"bon": fit_gao(torch.tensor([0.0, 0.8]), torch.tensor([0.0, 0.7]), "bon")}
    )
    assert text.startswith("The highest gold reward on the held-out prompts is 0.700 (bon 4, against 0.000")
    assert (
        "PPO's gold reward peaks at 0.600 (ppo 10, KL 1.00); past it the proxy keeps rising (1.000 -> 2.000"
        in text
    )
    assert (
        "DPO's gold reward does not fall (by two standard errors) while its proxy rises, over KL up to 9.00"
        in text
    )
    # best-of-n goes from gold 0 at KL 0 to 0.7 at sqrt(KL) 0.8: gold 0.6 at sqrt(KL) 0.8 * 6/7, KL 0.470
    assert "Best-of-n matches PPO's best gold reward (0.600 at KL 1.00) at KL 0.47." in text
    assert "The fitted best-of-n form" in text


def test_kl_to_reach_interpolates_in_sqrt_kl_by_hand():
    curve = [point("bon", 1, 0.0, 0.1, 0.0), point("bon", 2, 1.0, 0.5, 1.0), point("bon", 4, 4.0, 0.9, 2.0)]
    assert kl_to_reach(curve, 0.3) == pytest.approx(0.25)  # halfway from sqrt 0 to sqrt 1: sqrt(KL) 0.5
    assert kl_to_reach(curve, 0.7) == pytest.approx(1.5**2)  # halfway from sqrt 1 to sqrt 2
    assert kl_to_reach(curve, 0.05) == 0.0  # the first point already has it
    assert kl_to_reach(curve, 0.95) is None  # never reached
