"""Each stage of the RLHF step called alone: score, annotate, make_experience, the Generator."""

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.batch import Annotations, Samples, Scores
from rlhf.experience import annotate, make_experience
from rlhf.rewards import score
from rlhf.rollout import Generator
from tests.rlhf import split_case as case

MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def samples(sampled_logprobs=None):
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    return Samples(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2), ids, MASK, sampled_logprobs)


def test_score_weights_functions_and_applies_the_eos_penalty_by_hand():
    def length(prompts, completions, **kw):
        return [float(len(c)) for c in completions]

    def gold(prompts, completions, answer, **kw):
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

    out = score(
        [length, gold],
        torch.tensor([0.5, 0.0]),  # gold is watched, not trained on
        ["p", "q"],
        ["abcd", "xy"],
        {"answer": ["b", "z"]},
        ended_with_eos=torch.tensor([True, False]),
        missing_eos_penalty=-1.0,
    )
    assert out.raw.tolist() == [[4.0, 2.0], [1.0, 0.0]]
    assert out.total.tolist() == [2.0, -1.0]  # 0.5 * 4; the second never ended: the EOS penalty
    assert out.ended_with_eos.tolist() == [True, False]


class Uniform(torch.nn.Module):
    """A stand-in model: uniform logits over `vocab` tokens, so every token's log-prob is -log(vocab); counts its
    forward passes in `calls`."""

    def __init__(self, name, vocab, calls):
        super().__init__()
        self.name, self.vocab, self.calls = name, vocab, calls
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
        self.calls.append(self.name)
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


class Constant(torch.nn.Module):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def forward(self, input_ids, attention_mask, position_ids):
        self.calls.append("critic")
        return torch.full(input_ids.shape, 0.5)


def test_annotate_decides_where_old_logprobs_come_from():
    calls = []
    policy, ref, critic = Uniform("policy", 10, calls), Uniform("ref", 20, calls), Constant(calls)
    sampled = torch.full((2, 3), -0.5)

    def run(s, exact, updates, kl_in_reward, reference=ref):
        calls.clear()
        return annotate(
            s, policy, reference, critic, temperature=1.0, micro_batch_size=1, sampled_logprobs_exact=exact,
            updates_per_rollout=updates, kl_in_reward=kl_in_reward, share_prompts=False,
        )  # fmt: skip

    # the sampler's own log-probs, when exact: no policy forward at all
    ann = run(samples(sampled), exact=True, updates=4, kl_in_reward=True)
    assert torch.equal(ann.old_logprobs, sampled) and "policy" not in calls
    assert calls.count("ref") == 2 and calls.count("critic") == 2  # micro_batch_size 1: one forward per row
    torch.testing.assert_close(ann.ref_logprobs, torch.full((2, 3), -math.log(20)))
    assert ann.values.tolist() == [[0.5] * 3] * 2
    # not exact (bf16) and needed: several optimizer steps per rollout, or the KL penalty in the reward
    old = run(samples(sampled), exact=False, updates=4, kl_in_reward=False).old_logprobs
    torch.testing.assert_close(old, torch.full((2, 3), -math.log(10)))
    assert calls.count("policy") == 2
    old = run(samples(), exact=True, updates=1, kl_in_reward=True).old_logprobs
    torch.testing.assert_close(old, torch.full((2, 3), -math.log(10)))
    # not needed before the update: one update per rollout with the KL in the loss (or no reference)
    assert run(samples(), exact=True, updates=1, kl_in_reward=False).old_logprobs is None
    assert run(samples(), exact=True, updates=1, kl_in_reward=True, reference=None).old_logprobs is None
    assert "policy" not in calls


def test_make_experience_masks_truncated_completions_and_keeps_the_kl():
    s = samples()
    scores = Scores(torch.zeros(1, 2), torch.tensor([1.0, 2.0]), torch.tensor([True, False]))
    ann = Annotations(torch.full((2, 3), -1.0), torch.full((2, 3), -1.5), None)
    exp = make_experience(s, scores, ann, "grpo", kl_coef=0.1, group_size=2, mask_truncated_completions=True)
    assert exp.loss_mask.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]  # row 1 never emitted EOS
    assert exp.response_mask.tolist() == MASK.tolist()
    torch.testing.assert_close(exp.kl, 0.5 * MASK)  # k1: -1 - (-1.5)
    # grpo on scores [1, 2]: centred [-0.5, 0.5] / (std 0.7071 + 1e-4), then -0.1 * 0.5 per token, returns-to-go
    a = 0.5 / (2**-0.5 + 1e-4)
    torch.testing.assert_close(exp.advantages[0, :2], torch.tensor([-a - 0.1, -a - 0.05]))


def test_a_masked_out_completion_changes_nothing_in_the_update(tmp_path):
    """mask_truncated_completions in the update: a row with loss_mask 0 may carry any advantage."""
    deltas = []
    for factor in (1.0, 100.0):
        trainer = case.trainer(tmp_path / str(factor), "grpo", "dapo", micro=2)
        acc = trainer.accelerator
        exp = case.experience(acc.unwrap_model(trainer.policy), None)
        loss_mask = exp.loss_mask.clone()
        loss_mask[1] = 0
        advantages = exp.advantages.clone()
        advantages[1] *= factor
        before = case.weights(trainer)
        trainer.update(dataclasses.replace(exp, loss_mask=loss_mask, advantages=advantages))
        deltas.append({k: v - before[k] for k, v in case.weights(trainer).items()})
    for name, delta in deltas[0].items():
        torch.testing.assert_close(deltas[1][name], delta, rtol=1e-5, atol=1e-8)
    assert deltas[0]["policy.transformer.wte.weight"].abs().max() > 0


def test_generator_needs_weights_and_returns_samples(tokenizer, policy):
    gen = Generator(4, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    query = tokenizer(["the cat", "a"], return_tensors="pt", padding=True, padding_side="left")
    with pytest.raises(RuntimeError, match="before sync_weights"):
        gen.generate(query.input_ids, query.attention_mask)
    gen.sync_weights(policy)
    out = gen.generate(query.input_ids, query.attention_mask)
    assert isinstance(out, Samples) and out.response_ids.shape[0] == 2 and out.response_ids.shape[1] <= 4
    assert out.sampled_logprobs is not None and out.sampled_logprobs.shape == out.response_ids.shape
