"""Each recipe runs 2 steps on CPU, launched as users launch it (`accelerate launch ... recipes/x.py --config
recipes/x.yaml`), with the model and dataset replaced by tiny local stand-ins through the same loading code.
Each launch costs ~15 s of CPU (mostly imports), so the default suite runs one launch per code path and the
slow suite (`pytest -m slow`) runs the rest, the TL;DR chain and DDP with 2 processes."""

import json
from pathlib import Path

import pytest

from classic.cli import parse_config
from rlhf.train_command import PPORecipeConfig, run_ppo
from rlhf.trl_stages import (
    DPORecipeConfig,
    RewardRecipeConfig,
    SFTRecipeConfig,
    run_dpo,
    run_reward,
    run_sft,
)
from tests.recipes.conftest import REPO, launch

SMALL_PPO = ["--max_steps", "2", "--micro_batch_size", "2", "--num_ppo_epochs", "1", "--max_new_tokens", "4"]
SMALL_PPO += ["--bf16", "false", "--gradient_checkpointing", "false", "--disable_tqdm", "true"]
SMALL_TRL = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
SMALL_TRL += ["--bf16", "false", "--logging_steps", "1"]


def check_ok(result, output_dir: Path) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert (output_dir / "config.json").is_file() or (output_dir / "adapter_config.json").is_file()


def check_ppo_run(result, output_dir: Path, processes: int = 1) -> list[dict]:
    check_ok(result, output_dir)
    assert f"2 steps on {processes} process(es)" in result.stdout
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (output_dir / "checkpoint-2").is_dir()
    return rows


def imdb_run(assets, tmp_path, config: str, *extra: str, **launch_kwargs):
    out = tmp_path / "out"
    overrides = ["--model_name_or_path", assets["lm"], "--reward_model_name_or_path", assets["sentiment"]]
    overrides += ["--dataset_name", assets["imdb_disk"], "--output_dir", str(out), *SMALL_PPO, *extra]
    return launch("ppo.py", config, *overrides, **launch_kwargs), out


def gsm8k_run(assets, tmp_path, config: str, *extra: str, **launch_kwargs):
    out = tmp_path / "out"
    overrides = [
        "--model_name_or_path",
        assets["lm"],
        "--dataset_name",
        assets["gsm8k"],
        "--output_dir",
        str(out),
    ]
    return launch("ppo.py", config, *overrides, *SMALL_PPO, *extra, **launch_kwargs), out


# --- default suite: one launch per code path -------------------------------------------------------------------
def test_gpt2_imdb_ppo(assets, tmp_path):
    """PPO with a critic from the policy; reward = POSITIVE logit of a 2-label classifier; save_to_disk data."""
    result, out = imdb_run(
        assets,
        tmp_path,
        "recipes/gpt2_imdb_ppo.yaml",
        *["--rollout_batch_size", "4", "--mini_batch_size", "2"],
        *["--eval_split", "test", "--eval_max_samples", "3", "--eval_steps", "2"],
    )
    rows = check_ppo_run(result, out)
    assert "reward/tiny_sentiment:POSITIVE" in rows[0] and "value_loss" in rows[0]
    assert "eval/reward/tiny_sentiment:POSITIVE" in rows[1] and "eval/reward" not in rows[0]
    card = (out / "README.md").read_text()
    assert "held-out evaluation on 3 prompts" in card and f"base_model: {assets['lm']}" in card


def test_qwen_gsm8k_grpo_lora(assets, tmp_path):
    """GRPO + LoRA, chat-message prompts, exact-answer reward function, jsonl data (the Qwen stand-in has a chat
    template); gradient checkpointing stays on as in the YAML."""
    result, out = gsm8k_run(
        assets,
        tmp_path,
        "recipes/qwen_gsm8k_grpo_lora.yaml",
        *["--rollout_batch_size", "2", "--num_generations", "2", "--mini_batch_size", "4"],
        *["--gradient_checkpointing", "true"],
    )
    rows = check_ppo_run(result, out)
    assert (out / "adapter_model.safetensors").is_file()
    assert "reward/gsm8k_exact_answer" in rows[0] and "kl_loss" in rows[0]


def test_tldr_sft(assets, tmp_path):
    out = tmp_path / "sft"
    overrides = [
        "--model_name_or_path",
        assets["lm"],
        "--dataset_name",
        assets["tldr"],
        "--output_dir",
        str(out),
    ]
    check_ok(launch("sft.py", "recipes/tldr_sft.yaml", *overrides, *SMALL_TRL), out)


def test_tldr_reward(assets, tmp_path):
    out = tmp_path / "rm"
    overrides = ["--model_name_or_path", assets["lm"], "--dataset_name", assets["tldr_preference"]]
    check_ok(
        launch(
            "reward_model.py", "recipes/tldr_reward.yaml", *overrides, "--output_dir", str(out), *SMALL_TRL
        ),
        out,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    assert config["pad_token_id"] is not None


def test_tldr_dpo(assets, tmp_path):
    """DPO on the prompt/chosen/rejected stand-in of trl-lib/tldr-preference: the policy is saved as a causal LM
    with its tokenizer, and it moved away from the starting model (also the reference)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "dpo"
    overrides = ["--model_name_or_path", assets["lm"], "--dataset_name", assets["tldr_preference"]]
    overrides += ["--output_dir", str(out), "--learning_rate", "1e-3", "--warmup_steps", "0", *SMALL_TRL]
    check_ok(launch("dpo.py", "recipes/tldr_dpo.yaml", *overrides), out)
    assert (out / "tokenizer.json").is_file()
    before = AutoModelForCausalLM.from_pretrained(assets["lm"]).state_dict()
    after = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4


# --- bad input: fails before any training, naming the field ------------------------------------------------------
def ppo_config(assets, tmp_path, *extra: str) -> PPORecipeConfig:
    base = ["--config", str(REPO / "recipes/gpt2_imdb_ppo.yaml"), "--model_name_or_path", assets["lm"]]
    base += ["--reward_model_name_or_path", assets["sentiment"], "--dataset_name", assets["imdb"]]
    return parse_config(PPORecipeConfig, [*base, "--output_dir", str(tmp_path / "out"), *extra])


@pytest.mark.parametrize(
    "extra, error, message",
    [
        (
            ["--dataset_name", "./no/such/imdb.jsonl"],
            FileNotFoundError,
            "dataset_name='./no/such/imdb.jsonl'",
        ),
        (
            ["--dataset_name", "stanfordnlp/imdbb"],
            OSError,
            "dataset_name='stanfordnlp/imdbb' could not be loaded",
        ),
        (
            ["--model_name_or_path", "/no/such/model"],
            FileNotFoundError,
            "model_name_or_path='/no/such/model'",
        ),
        (["--model_name_or_path", "gpt2"], OSError, "model_name_or_path='gpt2' could not be loaded"),
        (["--reward_model_name_or_path", "lvwerra/distilbert-imdb"], OSError, "reward_model_name_or_path="),
        (
            ["--dataset_split", "validation", "--dataset_name", "IMDB_DISK"],
            ValueError,
            "no split 'validation'",
        ),
        (["--task", "gsm8k"], ValueError, "no column(s) ['question', 'answer']"),
    ],
)
def test_ppo_bad_input_fails_before_training(assets, tmp_path, monkeypatch, extra, error, message):
    extra = [assets["imdb_disk"] if e == "IMDB_DISK" else e for e in extra]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run_ppo(ppo_config(assets, tmp_path, *extra))
    assert not (tmp_path / "out").exists()


def test_sft_and_reward_bad_input_fail_before_training(assets, tmp_path, monkeypatch):
    monkeypatch.chdir(
        tmp_path
    )  # tldr_reward.yaml's ./runs/tldr_sft must not exist, whatever the checkout holds
    sft = parse_config(
        SFTRecipeConfig,
        ["--config", str(REPO / "recipes/tldr_sft.yaml"), "--output_dir", str(tmp_path / "o")],
    )
    with pytest.raises(OSError, match="model_name_or_path='EleutherAI/pythia-410m' could not be loaded"):
        run_sft(sft)
    sft.model_name_or_path, sft.dataset_name = assets["lm"], "trl-lib/tldr"
    with pytest.raises(OSError, match="dataset_name='trl-lib/tldr' could not be loaded"):
        run_sft(sft)
    rm = parse_config(
        RewardRecipeConfig,
        ["--config", str(REPO / "recipes/tldr_reward.yaml"), "--output_dir", str(tmp_path / "o")],
    )
    with pytest.raises(FileNotFoundError, match="model_name_or_path='./runs/tldr_sft': no such local path"):
        run_reward(rm)  # the SFT stage has not run
    rm.model_name_or_path, rm.dataset_name = assets["lm"], assets["tldr"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['chosen', 'rejected'\]"):
        run_reward(rm)
    assert not (tmp_path / "o").exists()


def test_dpo_bad_input_is_one_line_before_training(assets, tmp_path):
    """A preference dataset without chosen/rejected, and a beta <= 0, are refused before any weights load."""
    base = ["--config", str(REPO / "recipes/tldr_dpo.yaml"), "--model_name_or_path", assets["lm"]]
    base += ["--output_dir", str(tmp_path / "o")]
    cfg = parse_config(DPORecipeConfig, [*base, "--dataset_name", assets["tldr"]])  # prompt/completion only
    with pytest.raises(
        ValueError, match=r"^dataset_name: the dataset has no column\(s\) \['chosen', 'rejected'\]"
    ):
        run_dpo(cfg)
    for beta in ("0", "-0.1"):
        with pytest.raises(ValueError, match=rf"^beta must be > 0 \(it scales .*\), got {float(beta)}$"):
            parse_config(
                DPORecipeConfig, [*base, "--dataset_name", assets["tldr_preference"], "--beta", beta]
            )
    assert not (tmp_path / "o").exists()


# --- slow suite: the other recipes, the TL;DR chain, DDP ----------------------------------------------------------
@pytest.mark.slow
def test_gpt2_imdb_rloo(assets, tmp_path):
    result, out = imdb_run(
        assets,
        tmp_path,
        "recipes/gpt2_imdb_rloo.yaml",
        *["--rollout_batch_size", "2", "--num_generations", "2", "--mini_batch_size", "4"],
    )
    assert "value_loss" not in check_ppo_run(result, out)[0]


@pytest.mark.slow
def test_qwen_gsm8k_grpo(assets, tmp_path):
    result, out = gsm8k_run(
        assets,
        tmp_path,
        "recipes/qwen_gsm8k_grpo.yaml",
        *["--rollout_batch_size", "2", "--num_generations", "2", "--mini_batch_size", "4"],
    )
    check_ppo_run(result, out)


@pytest.mark.slow
def test_qwen_gsm8k_ppo(assets, tmp_path):
    result, out = gsm8k_run(
        assets, tmp_path, "recipes/qwen_gsm8k_ppo.yaml", "--rollout_batch_size", "4", "--mini_batch_size", "2"
    )
    assert "value_loss" in check_ppo_run(result, out)[0]


@pytest.mark.slow
def test_tldr_chain_sft_reward_ppo(assets, tmp_path):
    """The three TL;DR stages feed each other as in the YAMLs: PPO starts from the SFT output and scores with the
    trained reward model, which also seeds the critic."""
    sft, rm, ppo = tmp_path / "tldr_sft", tmp_path / "tldr_rm", tmp_path / "tldr_ppo"
    overrides = [
        "--model_name_or_path",
        assets["lm"],
        "--dataset_name",
        assets["tldr"],
        "--output_dir",
        str(sft),
    ]
    check_ok(launch("sft.py", "recipes/tldr_sft.yaml", *overrides, *SMALL_TRL), sft)
    overrides = [
        "--model_name_or_path",
        str(sft),
        "--dataset_name",
        assets["tldr_preference"],
        "--output_dir",
        str(rm),
    ]
    check_ok(launch("reward_model.py", "recipes/tldr_reward.yaml", *overrides, *SMALL_TRL), rm)
    overrides = [
        "--model_name_or_path",
        str(sft),
        "--reward_model_name_or_path",
        str(rm),
        "--output_dir",
        str(ppo),
    ]
    overrides += ["--dataset_name", assets["tldr"], "--rollout_batch_size", "2", "--mini_batch_size", "2"]
    overrides += ["--max_prompt_length", "256"]
    rows = check_ppo_run(launch("ppo.py", "recipes/tldr_ppo.yaml", *overrides, *SMALL_PPO), ppo)
    assert "reward/tldr_rm" in rows[0]
    assert rows[0]["reward"] == -1.0  # 4 new tokens never reach EOS: missing_eos_penalty replaces the score


@pytest.mark.slow
def test_ddp_two_cpu_processes(assets, tmp_path):
    """recipes/accelerate/ddp.yaml with 2 processes on CPU (gloo; ACCELERATE_USE_CPU=true, see the file)."""
    result, out = imdb_run(
        assets,
        tmp_path,
        "recipes/gpt2_imdb_ppo.yaml",
        *["--rollout_batch_size", "2", "--mini_batch_size", "2"],
        accelerate_config="recipes/accelerate/ddp.yaml",
        accelerate_args=("--num_processes", "2"),
        extra_env={"ACCELERATE_USE_CPU": "true"},
    )
    check_ppo_run(result, out, processes=2)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("recipes/qwen_gsm8k_ppo.yaml", ("--rollout_batch_size", "4", "--mini_batch_size", "2")),
        (
            "recipes/qwen_gsm8k_grpo_lora.yaml",
            ("--rollout_batch_size", "2", "--num_generations", "2", "--mini_batch_size", "4"),
        ),
    ],
)
def test_recipes_under_sharded_engines(assets, tmp_path, engine, config, extra):
    """The same recipe, only the accelerate config changed: 2 CPU processes under FSDP2 / ZeRO-2 / ZeRO-3."""
    if engine.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    engine_config = f"recipes/accelerate/{engine}.yaml"
    two = ("--num_processes", "2")
    result, out = gsm8k_run(
        assets, tmp_path, config, *extra, accelerate_config=engine_config, accelerate_args=two
    )
    rows = check_ppo_run(result, out, processes=2)
    assert ("value_loss" in rows[0]) == config.endswith("_ppo.yaml")


def test_rlhf_train_under_accelerate_launch_takes_both_flag_spellings(assets, tmp_path):
    """`accelerate launch -m rlhf train` = recipes/ppo.py; `--max-steps` and `--max_steps` are the same field."""
    import os
    import subprocess

    from tests.recipes.conftest import ACCELERATE

    out = tmp_path / "out"
    cmd = [ACCELERATE, "launch", "--config_file", "recipes/accelerate/cpu.yaml", "-m", "rlhf", "train"]
    cmd += ["--config", "recipes/qwen_gsm8k_grpo.yaml", "--model-name-or-path", assets["lm"]]
    cmd += ["--dataset_name", assets["gsm8k"], "--output-dir", str(out), *SMALL_PPO]
    cmd += ["--rollout-batch-size", "2", "--num_generations", "2", "--mini-batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    check_ppo_run(result, out)
    assert (out / "reward.png").is_file()  # every run leaves its plots
    bad = subprocess.run(
        [*cmd[:7], "--config", "recipes/qwen_gsm8k_grpo.yaml", "--max-stepz", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        bad.returncode != 0 and "rlhf train: error: command line: unknown key(s) ['max_stepz']" in bad.stderr
    )


def test_agent_recipe_trains_and_evaluates_in_a_text_env(tmp_path):
    """`rlhf train --config recipes/frozenlake_agent.yaml` (an `env:` key): episodes in text FrozenLake with a
    tiny chat model (its chat template gives the turn markers), held-out seeds evaluated, LoRA adapter saved."""
    import subprocess
    import sys

    from rlhf.envs import make_frozenlake
    from rlhf.tiny import build_causal_lm, build_tokenizer
    from tests.recipes.conftest import CHAT_TEMPLATE

    env = make_frozenlake(map_in_prompt=True, neighbours=True)  # the recipe's observations
    obs, info = env.reset(seed=0)
    tok = build_tokenizer([info["system_prompt"], obs, "left down right up"] * 20, vocab_size=400)
    tok.chat_template = CHAT_TEMPLATE
    build_causal_lm(tok, seed=0, n_positions=2048).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "rlhf", "train", "--config", str(REPO / "recipes/frozenlake_agent.yaml")]
    cmd += ["--model_name_or_path", str(tmp_path / "lm"), "--output_dir", str(out), "--max_steps", "2"]
    cmd += [
        "--rollout_batch_size",
        "2",
        "--mini_batch_size",
        "2",
        "--micro_batch_size",
        "2",
        "--max_turns",
        "2",
    ]
    cmd += ["--eval_steps", "2", "--num_eval_seeds", "2", "--max_new_tokens", "4", "--disable_tqdm", "true"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    check_ok(result, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]  # eval_on_start, then two steps
    assert rows[0]["eval/episode_turns"] == 2.0 and "eval/success_rate" in rows[2]
    assert 1 <= rows[1]["episode_turns"] <= 2 and "value_loss" in rows[1]  # gae: the critic trains
    assert (out / "adapter_config.json").is_file() and (out / "critic").is_dir()
