"""The demo's task: short product reviews written by a seeded template grammar, and a gold judge.

Gold judge, in one sentence: a completion scores (#positive words - #negative words) / (#positive + #negative
words) over the fixed sentiment lexicon below, or 0 if it uses none, so it lies in [-1, 1].

Nothing here is a data file: the grammar (templates + word lists) generates as many reviews as asked for, the
same ones for the same seed. A review is an opening sentence (the *prompt*, which carries no sentiment) followed
by 2-4 sentences and an optional closing line (the *completion*). Each review draws how positive it is, so the
corpus holds glowing, scathing and mixed reviews and its mean gold score is about 0.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Sequence

POSITIVE = ("great", "excellent", "superb", "lovely", "solid", "reliable", "brilliant", "perfect", "sturdy")
NEGATIVE = ("awful", "terrible", "poor", "flimsy", "useless", "dreadful", "weak", "cheap", "shoddy")
POSITIVE_VERBS = ("love", "enjoy", "recommend")
NEGATIVE_VERBS = ("hate", "regret", "avoid")
LEXICON_POS = frozenset(POSITIVE + POSITIVE_VERBS)
LEXICON_NEG = frozenset(NEGATIVE + NEGATIVE_VERBS)

PRODUCTS = (
    "blender", "kettle", "toaster", "lamp", "backpack", "keyboard", "mouse", "speaker",
    "headset", "tent", "drill", "printer", "camera", "watch", "jacket", "chair",
)  # fmt: skip
ASPECTS = (
    "battery", "build", "price", "design", "sound", "screen", "handle", "manual",
    "packaging", "finish", "motor", "cable", "strap", "lid", "warranty", "support",
)  # fmt: skip
WHEN = ("last week", "in May", "on sale", "for my office", "as a gift", "a month ago")
OPENERS = (
    "I bought this {product} {when}.",
    "My sister gave me this {product} {when}.",
    "We ordered the {product} {when}.",
    "I picked up a new {product} {when}.",
)
ADVERBS = ("", "really ", "quite ", "very ", "rather ")
FILLERS = (
    "It arrived on time.",
    "I use it every day.",
    "It comes in three colours.",
    "The box was small.",
)
SENTENCES = (
    "The {a} is {adv}{w}.",
    "The {a} feels {w}.",
    "I found the {a} {adv}{w}.",
    "The {a} is {w} and the {b} is {w2}.",
    "The {a} is {w} but the {b} is {w2}.",
    "I {v} the {a}.",
)
CLOSINGS = ("I {v} it.", "A {w} buy.", "I {v} it, a {w} buy.")

_WORD = re.compile(r"[a-z]+")


def gold_score(completion: str) -> float:
    """The gold judge: lexicon sentiment of `completion` in [-1, 1] (0 when it has no sentiment word)."""
    words = _WORD.findall(completion.lower())
    pos = sum(w in LEXICON_POS for w in words)
    neg = sum(w in LEXICON_NEG for w in words)
    return 0.0 if pos + neg == 0 else (pos - neg) / (pos + neg)


def gold_judge(prompts: list[str], completions: list[str], **columns: object) -> list[float]:
    """`gold_score` as a PPO reward function (signature `f(prompts, completions, **dataset_columns)`)."""
    return [gold_score(c) for c in completions]


def all_prompts() -> list[str]:
    """Every opening sentence the grammar can produce (4 openers x 16 products x 6 times = 384)."""
    return [opener.format(product=p, when=w) for opener, p, w in itertools.product(OPENERS, PRODUCTS, WHEN)]


def split_prompts(seed: int, eval_fraction: float = 0.25) -> tuple[list[str], list[str]]:
    """(train, eval) prompts. Eval prompts never appear in the SFT corpus, the preference pairs or PPO."""
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    n_eval = int(len(prompts) * eval_fraction)
    return prompts[n_eval:], prompts[:n_eval]


def write_completion(rng: random.Random, p_positive: float | None = None) -> str:
    """2-4 sentences and an optional closing; each sentiment word is positive with probability `p_positive`
    (drawn per review when None, so reviews range from glowing through mixed to scathing)."""
    if p_positive is None:
        p_positive = rng.choice((0.05, 0.2, 0.5, 0.8, 0.95))

    def word(pos: list[str] | tuple[str, ...], neg: list[str] | tuple[str, ...]) -> str:
        return rng.choice(pos if rng.random() < p_positive else neg)

    sentences = []
    for _ in range(rng.randint(2, 4)):
        if rng.random() < 0.15:
            sentences.append(rng.choice(FILLERS))
            continue
        a, b = rng.sample(ASPECTS, 2)
        sentences.append(
            rng.choice(SENTENCES).format(
                a=a,
                b=b,
                adv=rng.choice(ADVERBS),
                w=word(POSITIVE, NEGATIVE),
                w2=word(POSITIVE, NEGATIVE),
                v=word(POSITIVE_VERBS, NEGATIVE_VERBS),
            )
        )
    if rng.random() < 0.6:
        # The closing follows the review's overall leaning, as people's closing lines do.
        positive = p_positive > 0.5 or (p_positive == 0.5 and rng.random() < 0.5)
        verbs, words = (POSITIVE_VERBS, POSITIVE) if positive else (NEGATIVE_VERBS, NEGATIVE)
        template = rng.choice(CLOSINGS)
        sentences.append(template.format(v=rng.choice(verbs), w=rng.choice(words)))
    return " " + " ".join(sentences)


def make_reviews(prompts: Sequence[str], n: int, seed: int) -> list[str]:
    """`n` full reviews (prompt + completion) for the SFT corpus."""
    rng = random.Random(seed)
    return [p + write_completion(rng) for p in (rng.choice(prompts) for _ in range(n))]


def make_preference_pairs(prompts: Sequence[str], n: int, seed: int, label_noise: float) -> dict[str, list]:
    """`n` pairs of two reviews of the same prompt, labelled by the gold judge, with a fraction `label_noise` of
    labels flipped (like disagreeing human raters). Ties are redrawn. Returns columns `chosen`, `rejected` (full
    texts, as TRL's RewardTrainer wants), `gold_correct` (False where the label was flipped), and the same pairs
    split as DPOTrainer wants them: `prompt`, `chosen_completion`, `rejected_completion`."""
    rng = random.Random(seed)
    chosen, rejected, correct, pair_prompts, chosen_completions, rejected_completions = [], [], [], [], [], []
    while len(chosen) < n:
        prompt = rng.choice(prompts)
        a, b = write_completion(rng), write_completion(rng)
        score_a, score_b = gold_score(a), gold_score(b)
        if score_a == score_b:
            continue
        if score_a < score_b:
            a, b = b, a
        flip = rng.random() < label_noise
        if flip:
            a, b = b, a
        chosen.append(prompt + a)
        rejected.append(prompt + b)
        correct.append(not flip)
        pair_prompts.append(prompt)
        chosen_completions.append(a)
        rejected_completions.append(b)
    return {
        "chosen": chosen,
        "rejected": rejected,
        "gold_correct": correct,
        "prompt": pair_prompts,
        "chosen_completion": chosen_completions,
        "rejected_completion": rejected_completions,
    }
