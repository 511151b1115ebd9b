"""PAD == EOS (Llama, Qwen, SmolLM tokenizers): no new token, no resized embeddings, masks from positions."""

import datasets
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from rlhf import PPOConfig, PPOTrainer
from rlhf.rollout import ends_with_eos, forward_logprobs, generate, response_mask_from_ids
from rlhf.tiny import build_causal_lm, build_tokenizer

CORPUS = ["the movie was good", "a bad plot", "the cat sat on the mat", "good good very good"] * 20


def pad_is_eos_tokenizer():
    tok = build_tokenizer(CORPUS, vocab_size=300)
    tok.pad_token = tok.eos_token  # as most chat tokenizers ship
    assert tok.pad_token_id == tok.eos_token_id
    return tok


def reward(prompts, completions, **kw):
    return [float(c.count("good")) for c in completions]


def config(tmp_path, **kw):
    values = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        rollout_batch_size=2,
        num_generations=2,
        mini_batch_size=4,
        micro_batch_size=2,
        max_new_tokens=6,
        num_ppo_epochs=1,
        learning_rate=1e-2,
        advantage_estimator="grpo",
        kl_coef=0.0,
        disable_tqdm=True,
        plot_metrics=False,
    )
    values.update(kw)
    return PPOConfig(**values)


def test_completions_end_at_their_first_eos_when_pad_is_eos():
    """What generate returns after a completion's EOS is PAD, here the same id: the mask still stops after the
    first EOS, because it is built from positions."""
    tok = pad_is_eos_tokenizer()
    eos = tok.eos_token_id
    ids = torch.tensor([[7, eos, eos, eos], [7, 8, 9, 10], [eos, eos, eos, eos]])
    mask = response_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ends_with_eos(ids, mask, eos).tolist() == [True, False, True]
    # and through generate, on a model that can emit EOS: every sampled row obeys the same rule
    model = build_causal_lm(tok, seed=0)
    query = tok(["the movie", "a"] * 8, return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    samples = generate(model, query.input_ids, query.attention_mask, 8, 1.0, 0, 1.0, eos, tok.pad_token_id)
    for row, n in enumerate(samples.response_mask.sum(1).long().tolist()):
        real = samples.response_ids[row, :n].tolist()
        assert eos not in real[:-1] and samples.response_mask[row, n:].sum() == 0


def test_full_fine_tuning_keeps_the_vocabulary_and_the_saved_model_loads(tmp_path):
    tok = pad_is_eos_tokenizer()
    model = build_causal_lm(tok, seed=0)
    rows = model.get_input_embeddings().weight.shape[0]
    n_tokens = len(tok)
    ds = datasets.Dataset.from_dict({"prompt": ["the movie", "a dog", "the cat", "it was"] * 4})
    trainer = PPOTrainer(model, reward, config(tmp_path), ds, processing_class=tok)
    trainer.train()
    trainer.save_model(tmp_path / "final")
    assert len(tok) == n_tokens and tok.pad_token_id == tok.eos_token_id  # no <|pad|> added
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert loaded.get_input_embeddings().weight.shape[0] == rows == loaded.config.vocab_size
    trained = trainer.accelerator.unwrap_model(trainer.policy)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)


def test_a_lora_adapter_loads_onto_the_untouched_base_model_and_reproduces_the_policy(tmp_path):
    tok = pad_is_eos_tokenizer()
    build_causal_lm(tok, seed=0).save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, task_type="CAUSAL_LM")
    ds = datasets.Dataset.from_dict({"prompt": ["the movie", "a dog", "the cat", "it was"] * 4})
    trainer = PPOTrainer(
        str(tmp_path / "base"), reward, config(tmp_path), ds, processing_class=tok, peft_config=lora
    )
    trainer.train()
    trainer.save_model(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # the original vocabulary, never resized
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    policy = trainer.accelerator.unwrap_model(trainer.policy).eval()
    query = tok(["the movie", "a"], return_tensors="pt", padding=True, padding_side="left")
    response = tok(["was good", "bad plot"], return_tensors="pt", padding=True, padding_side="right")
    inputs = (query.input_ids, query.attention_mask, response.input_ids, response.attention_mask.float())
    with torch.no_grad():
        expected = forward_logprobs(policy, *inputs, 1.0)[0]
        got = forward_logprobs(reloaded, *inputs, 1.0)[0]
        untrained = forward_logprobs(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), *inputs, 1.0)[0]
    torch.testing.assert_close(got, expected)
    assert (got - untrained).abs().max() > 1e-3  # the adapter did change the policy
