"""The lean sampler: draws that follow the softmax, log-probs equal to a full forward pass, and a fallback to
`generate` whenever filtering or other logits processors are asked for."""

import pytest
import torch

from rlhf import rollout
from rlhf.rollout import (
    draw_tokens,
    forward_logprobs,
    forward_values,
    generate,
    lean_sampling_supported,
    response_mask_from_ids,
    sample,
    shared_prompt_logits,
    shared_prompt_values,
)

PROMPTS = ["the movie", "a dog ran in the", "good", "it was fine I"]


def left_padded(tokenizer):
    enc = tokenizer(PROMPTS * 2, return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any()  # prompts of different lengths: left padding is exercised
    return enc.input_ids, enc.attention_mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_logprobs_equal_a_full_forward_and_seeded_runs_repeat(tokenizer, sft_policy, temperature):
    query_ids, query_mask = left_padded(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(3)
    response_ids, logprobs = sample(sft_policy, query_ids, query_mask, 16, temperature, eos, pad)
    torch.manual_seed(3)
    again, _ = sample(sft_policy, query_ids, query_mask, 16, temperature, eos, pad)
    assert torch.equal(response_ids, again)
    mask = response_mask_from_ids(response_ids, eos)
    assert 0 < mask.sum() < mask.numel()  # some completions ended with EOS (PAD after it), some did not
    assert (response_ids[mask == 0] == pad).all()
    # the preallocated KV cache gives the same log-probs as one forward pass over the whole sequence
    with torch.no_grad():
        full, _ = forward_logprobs(sft_policy, query_ids, query_mask, response_ids, mask, temperature)
    assert torch.allclose(logprobs, full * mask, atol=1e-4)
    assert (logprobs[mask == 0] == 0).all()


def test_a_repeated_prompt_is_prefilled_once_with_the_same_samples(tokenizer, sft_policy):
    """GRPO-style groups (each prompt twice here): the prefill runs on the 4 distinct prompts and every row gets
    its prompt's cache; tokens and log-probs are those of prefilling all 8 rows. Two rows with equal ids but
    different masks (a real token equal to PAD, as with PAD == EOS) are not merged."""
    query_ids, query_mask = left_padded(tokenizer)
    # row 8: row 0's ids with a real first token where row 0 has padding
    assert query_mask[0, 0] == 0
    query_ids = torch.cat([query_ids, query_ids[:1]])
    query_mask = torch.cat([query_mask, torch.ones_like(query_mask[:1])])
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prefill_rows = []
    hook = sft_policy.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_rows.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    torch.manual_seed(5)
    shared_ids, shared_logprobs = sample(sft_policy, query_ids, query_mask, 12, 1.0, eos, pad)
    first_call = prefill_rows[0]
    torch.manual_seed(5)
    plain_ids, plain_logprobs = sample(
        sft_policy, query_ids, query_mask, 12, 1.0, eos, pad, share_prompts=False
    )
    hook.remove()
    assert first_call == (5, query_ids.shape[1])  # 4 distinct prompts + the differently masked copy
    assert torch.equal(shared_ids, plain_ids)
    torch.testing.assert_close(shared_logprobs, plain_logprobs, atol=1e-5, rtol=0)
    mask = response_mask_from_ids(shared_ids, eos)
    with torch.no_grad():
        full, _ = forward_logprobs(sft_policy, query_ids, query_mask, shared_ids, mask, 1.0)
    torch.testing.assert_close(shared_logprobs, full * mask, atol=1e-4, rtol=0)


class WithoutLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep`: the LM head runs everywhere and the caller selects."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, use_cache=False, past_key_values=None
    ):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, past_key_values=past_key_values)  # fmt: skip


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("keeps", [True, False])
def test_logprobs_at_action_positions_only_equal_the_full_forward(tokenizer, sft_policy, share, keeps, first):
    """`positions` (an episode's action tokens): the LM head runs only where some row needs a log-prob; there the
    log-probs, entropies and every parameter's gradient equal the full computation's, elsewhere both are 0.
    Shared prompts or not, with the model's `logits_to_keep` or without, the first response position kept or
    not."""
    query_ids, query_mask = tokenizer(PROMPTS[:3] * 2, return_tensors="pt", padding=True).values()
    g = torch.Generator().manual_seed(2)
    response_ids = torch.randint(0, sft_policy.config.vocab_size, (6, 10), generator=g)
    mask = torch.ones_like(response_ids)
    positions = torch.zeros_like(response_ids)
    positions[0, [1, 2, 7]] = 1  # 'replies' at different positions per row; columns 3-6 and 9 hold none
    positions[3, [2, 8]] = 1
    positions[:, 0] = int(first)
    model = sft_policy if keeps else WithoutLogitsToKeep(sft_policy)
    calls = []
    hook = sft_policy.lm_head.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    results = []
    for where in (positions, None):
        sft_policy.zero_grad()
        calls.clear()
        lp, ent = forward_logprobs(model, query_ids, query_mask, response_ids, mask, 0.8, with_entropy=True,
                                   share_prompts=share, positions=where)  # fmt: skip
        ((lp + 0.1 * ent) * positions).sum().backward()
        grads = {n: p.grad.clone() for n, p in sft_policy.named_parameters() if p.grad is not None}
        results.append((lp.detach(), ent.detach(), grads, sum(calls)))
    hook.remove()
    (lp, ent, grads, rows), (full_lp, full_ent, full_grads, full_rows) = results
    kept = positions.bool().any(0).expand_as(positions)
    torch.testing.assert_close(lp[kept], full_lp[kept], atol=1e-6, rtol=0)
    torch.testing.assert_close(ent[kept], full_ent[kept], atol=1e-5, rtol=0)
    assert (lp[~kept] == 0).all() and (ent[~kept] == 0).all()
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
    if keeps:  # the LM head ran on the kept positions (1, 2, 7, 8 and maybe 0; shared: the prompt's last and
        # positions 1, 2, 7, 8), not on all 10 (+ 1)
        assert full_rows == 11 and rows == (5 if share else 4 + int(first))


@pytest.mark.parametrize("peft", [False, True])
def test_shared_prompt_forward_gives_the_unshared_logprobs_and_gradients(tokenizer, sft_policy, peft):
    """Each prompt three times: the log-probs and every parameter's gradient of sum(logprobs) with each prompt
    run once (its KV cache serving its three responses) equal those of running all 9 full sequences."""
    query_ids, query_mask = tokenizer(PROMPTS[:3] * 3, return_tensors="pt", padding=True).values()
    torch.manual_seed(1)
    response_ids, _ = sample(
        sft_policy, query_ids, query_mask, 8, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    model = sft_policy
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            sft_policy, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False)
        )
    model.train()
    results = []
    for share in (True, False):
        model.zero_grad()
        logprobs, _ = forward_logprobs(
            model, query_ids, query_mask, response_ids, mask, 0.9, share_prompts=share
        )
        (logprobs * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logprobs, grads))
    (shared, shared_grads), (plain, plain_grads) = results
    assert shared_prompt_logits(model, query_ids[:3], query_mask[:3], response_ids[:3], mask[:3]) is None
    torch.testing.assert_close(shared * mask, plain * mask, atol=2e-6, rtol=0)
    assert shared_grads.keys() == plain_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_shared_prompt_values_give_the_unshared_values_and_gradients(tokenizer, sft_policy):
    """The critic with each prompt run once (shared_prompt_values): the same values and the same gradient of
    every critic parameter as running all 9 full sequences; None when no prompt repeats."""
    from rlhf.models import Critic

    critic = Critic.from_policy(sft_policy).train()
    query_ids, query_mask = tokenizer(PROMPTS[:3] * 3, return_tensors="pt", padding=True).values()
    torch.manual_seed(1)
    response_ids, _ = sample(
        sft_policy, query_ids, query_mask, 8, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    weights = torch.rand(mask.shape) * mask
    results = []
    for share in (True, False):
        critic.zero_grad()
        values = forward_values(critic, query_ids, query_mask, response_ids, mask, share_prompts=share)
        (values * weights).sum().backward()
        results.append((values, {n: p.grad.clone() for n, p in critic.named_parameters()}))
    (shared, shared_grads), (plain, plain_grads) = results
    assert shared_prompt_values(critic, query_ids[:3], query_mask[:3], response_ids[:3], mask[:3]) is None
    assert shared_prompt_values(critic, query_ids, query_mask, response_ids, mask) is not None  # the path ran
    torch.testing.assert_close(shared * mask, plain * mask, atol=2e-6, rtol=0)
    assert (plain * mask).abs().max() > 1e-3  # values that are not all zero
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_draw_tokens_follows_the_distribution_and_never_draws_a_zero_probability_token():
    torch.manual_seed(0)
    rows = torch.tensor(
        [
            [0.5, 0.0, 0.3, 0.2, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],  # all mass on the last token: u < row total, so no index past the end
            [1.0, 0.0, 0.0, 0.0, 0.0],  # all mass on the first: u = 0 still picks index 0, never the zeros
            [0.1, 0.1, 0.1, 0.1, 0.6],
        ]
    )
    n = 100_000
    draws = draw_tokens(rows.repeat_interleave(n, dim=0)).view(len(rows), n)
    counts = torch.stack([torch.bincount(d, minlength=5) for d in draws]).float() / n
    # binomial standard deviation at p = 0.5 and n = 1e5 is 0.0016: 0.006 is about 4 sigma
    assert torch.allclose(counts, rows, atol=0.006)
    assert (counts[rows == 0] == 0).all()
    # unnormalised rows (float32 softmax sums are 1 only to rounding) are scaled by their own total
    torch.manual_seed(0)
    scaled = draw_tokens((rows * 3.0).repeat_interleave(n, dim=0)).view(len(rows), n)
    assert torch.equal(scaled, draws)


def test_finished_rows_leave_the_batch_without_changing_any_sample(tokenizer, sft_policy):
    """Rows that emitted EOS are dropped from the decode batch and its KV cache (here at the first EOS: 1 of 8
    rows is an eighth); the other rows draw the same random numbers, so the tokens are those of decoding every
    row to the end and the log-probs agree to float rounding."""
    query_ids, query_mask = left_padded(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    decode_rows = []
    hook = sft_policy.register_forward_pre_hook(
        lambda module, args, kwargs: decode_rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    runs = {}
    for drop in (True, False):
        decode_rows.clear()
        torch.manual_seed(11)
        ids, logprobs = sample(sft_policy, query_ids, query_mask, 24, 1.0, eos, pad, drop_finished=drop)
        runs[drop] = ids, logprobs, list(decode_rows[1:])  # decode steps (the prefill is call 0)
    hook.remove()
    (dropped_ids, dropped_lp, dropped_rows), (kept_ids, kept_lp, kept_rows) = runs[True], runs[False]
    mask = response_mask_from_ids(kept_ids, eos)
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max() - 2  # rows end at different steps
    assert torch.equal(dropped_ids, kept_ids)
    torch.testing.assert_close(dropped_lp, kept_lp, atol=1e-5, rtol=0)
    assert set(kept_rows) == {8}
    # each decode step runs exactly the rows that have not ended before it
    assert dropped_rows == [int((lengths > t).sum()) for t in range(1, len(kept_rows) + 1)]
    with torch.no_grad():
        full, _ = forward_logprobs(sft_policy, query_ids, query_mask, dropped_ids, mask, 1.0)
    torch.testing.assert_close(dropped_lp, full * mask, atol=1e-4, rtol=0)


def test_sample_stops_when_every_row_has_ended(tokenizer, policy):
    query_ids, query_mask = left_padded(tokenizer)
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        # a constant final hidden state and an LM head (tied to the embeddings) that only scores EOS: p(EOS) = 1
        policy.transformer.ln_f.weight.zero_()
        policy.transformer.ln_f.bias.fill_(1.0)
        policy.lm_head.weight.zero_()
        policy.lm_head.weight[eos] = 1.0
    response_ids, logprobs = sample(policy, query_ids, query_mask, 8, 1.0, eos, tokenizer.pad_token_id)
    assert response_ids.shape == (len(query_ids), 1) and (response_ids == eos).all()
    assert torch.allclose(logprobs, torch.zeros_like(logprobs), atol=1e-4)


def test_generate_falls_back_to_model_generate_for_filtering_and_processors(tokenizer, policy):
    query_ids, query_mask = left_padded(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert lean_sampling_supported(policy, top_k=0, top_p=1.0)
    lean = generate(policy, query_ids, query_mask, 6, 1.0, 0, 1.0, eos, pad)
    assert lean.sampled_logprobs is not None and lean.sampled_logprobs.shape == lean.response_ids.shape
    assert not lean_sampling_supported(policy, top_k=5, top_p=1.0)
    assert not lean_sampling_supported(policy, top_k=0, top_p=0.9)
    assert generate(policy, query_ids, query_mask, 6, 1.0, 5, 1.0, eos, pad).sampled_logprobs is None
    policy.generation_config.repetition_penalty = 1.3  # a logits processor the lean sampler does not apply
    assert not lean_sampling_supported(policy, top_k=0, top_p=1.0)
    policy.generation_config.repetition_penalty = 1.0  # neutral
    assert lean_sampling_supported(policy, top_k=0, top_p=1.0)


def test_entropy_for_logging_has_no_graph_and_the_same_value(tokenizer, policy):
    query_ids, query_mask = left_padded(tokenizer)
    response_ids, _ = sample(
        policy, query_ids, query_mask, 5, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    inputs = (policy, query_ids, query_mask, response_ids, mask, 1.0)
    logprobs, with_grad = forward_logprobs(*inputs, with_entropy=True)
    _, for_logging = forward_logprobs(*inputs, with_entropy=True, entropy_grad=False)
    assert logprobs.requires_grad and with_grad.requires_grad and not for_logging.requires_grad
    assert torch.allclose(with_grad, for_logging)


def test_sample_reports_non_finite_logits_instead_of_drawing_garbage(tokenizer, policy):
    query_ids, query_mask = left_padded(tokenizer)
    with torch.no_grad():
        policy.lm_head.weight[3, 0] = float("nan")  # tied to the embeddings: every step's logits hold a NaN
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        sample(policy, query_ids, query_mask, 4, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_sample_on_a_rope_gqa_model_matches_a_full_forward(tokenizer, monkeypatch):
    """Qwen2 layout (rotary positions, grouped-query attention): the preallocated cache must hand attention the
    same keys and values as a full forward pass, with left padding shifting every row's positions."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    query_ids, query_mask = left_padded(tokenizer)
    created = []
    original = rollout._PreallocatedLayer.__init__

    def spy(self, capacity):
        created.append(capacity)
        original(self, capacity)

    monkeypatch.setattr(rollout._PreallocatedLayer, "__init__", spy)
    response_ids, logprobs = sample(
        model, query_ids, query_mask, 8, 1.0, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    assert created == [query_ids.shape[1] + 8] * config.num_hidden_layers  # every layer preallocated
    mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    with torch.no_grad():
        full, _ = forward_logprobs(model, query_ids, query_mask, response_ids, mask, 1.0)
    assert torch.allclose(logprobs, full * mask, atol=1e-5)


def test_disable_dropout_covers_modules_and_llama_style_attention_dropout():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf.models import disable_dropout

    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention_dropout=0.5,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config)
    model.extra = torch.nn.Dropout(0.3)
    disable_dropout(model)
    attention = [m for m in model.modules() if hasattr(m, "attention_dropout")]
    assert len(attention) == 2 and all(m.attention_dropout == 0.0 for m in attention)
    assert model.extra.p == 0.0
    # so training mode (the update) and eval mode (the rollout) give the same logits
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        model.train()
        train_logits = model(input_ids=ids).logits
        model.eval()
        assert torch.allclose(train_logits, model(input_ids=ids).logits, atol=1e-6)


def test_a_finished_row_gets_log_prob_zero_even_where_pad_is_impossible(tokenizer, sft_policy):
    """A finished row is fed PAD; where the policy gives PAD probability 0 (log-prob -inf), 0 * -inf would be NaN
    and the whole batch would be refused as non-finite: the entry is set to 0 instead."""
    pad = tokenizer.pad_token_id

    class NoPad(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def forward(self, **kw):
            out = self.model(**kw)
            out.logits[..., pad] = float("-inf")
            return out

    query_ids, query_mask = left_padded(tokenizer)
    torch.manual_seed(3)
    response_ids, logprobs = sample(
        NoPad(sft_policy), query_ids, query_mask, 16, 1.0, tokenizer.eos_token_id, pad, drop_finished=False
    )
    mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    assert (mask == 0).any() and (mask[:, -1] == 1).any()  # some rows finished while others still decoded
    assert torch.isfinite(logprobs).all()
    assert (logprobs[mask == 0] == 0).all() and (logprobs[mask == 1] < 0).all()
