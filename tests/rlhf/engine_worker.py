"""Run by test_engines.py under `accelerate launch --config_file recipes/accelerate/<engine>.yaml --num_processes 2`
(CPU, gloo): 2 steps of each estimator named on the command line on a tiny GPT-2, then save_model; rank 0 writes
the final policy (and critic) weights and the metrics for the test to compare across engines. With `resume` after
the estimators, for the first estimator: a 3-step run straight, and a 3-step run that crashes in step 3 and is
resumed from its step-2 checkpoint by a new trainer; both saved for the test to compare. The estimator runs
evaluate after step 2 (eval/* in the last history row). With `env_gae`: 2 steps of gae on text FrozenLake episodes;
`env_markov`: the same with history_turns 0 (one row per turn)."""

import contextlib
import json
import os
import sys
from pathlib import Path

import datasets
import torch

from rlhf import PPOConfig, PPOTrainer
from rlhf.engines import end_distributed, engine_name
from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer

out = Path(sys.argv[1])
torch.set_num_threads(1)
tokenizer = build_tokenizer(
    ["the cat sat on the mat", "a dog ran in the park", "good good"] * 20, vocab_size=300
)
calls = {"n": 0, "crash_at": None}
# the policy is loaded from a path, as users do: under ZeRO-3 from_pretrained must not partition it at load time
# (the trainer copies it for the reference); one copy per rank, so no rank reads a half-written file
BASE = out / f"base-rank{os.environ.get('RANK', '0')}"
build_causal_lm(tokenizer, seed=0).save_pretrained(BASE)
tokenizer.save_pretrained(BASE)

LAKE_BASE = out / f"lake-base-rank{os.environ.get('RANK', '0')}"
if (
    "env_gae" in sys.argv[2:]
):  # a tokenizer and model for text FrozenLake, saved before any process group exists
    from rlhf.envs import make_frozenlake as _lake

    _obs, _info = _lake(map_in_prompt=True).reset(seed=0)
    LAKE = build_tokenizer([_info["system_prompt"], _obs, "left down right up"] * 20, vocab_size=400)
    build_causal_lm(LAKE, seed=0, n_positions=1024).save_pretrained(LAKE_BASE)
    LAKE.save_pretrained(LAKE_BASE)


def count_good(prompts, completions, **columns):
    calls["n"] += 1
    if calls["n"] == calls["crash_at"]:
        raise KeyboardInterrupt("simulated crash")  # on every rank in the same step
    return [float(c.count("good")) + len(c) / 100 for c in completions]


def run(estimator: str, directory: Path, max_steps: int = 2, tag: str = "", **overrides) -> PPOTrainer:
    calls["n"] = 0
    args = PPOConfig(
        output_dir=str(directory),
        max_steps=max_steps,
        rollout_batch_size=4,
        num_generations=2,
        mini_batch_size=4,
        micro_batch_size=2,  # 2 optimizer steps per rollout, each over 2 microbatches
        num_ppo_epochs=1,
        max_new_tokens=6,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        advantage_estimator=estimator,
        kl_coef=0.1,
        disable_tqdm=True,
        plot_metrics=False,
        **overrides,
    )
    trainer = PPOTrainer(
        str(BASE),
        [build_reward_model(tokenizer, seed=1), count_good],
        args,
        datasets.Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(16)]}),
        # 5 prompts: rank 1's share is padded; sharded generation and reward models must stay in step
        datasets.Dataset.from_dict({"prompt": ["the cat", "a dog ran", "good", "the park", "a mat"]}),
        processing_class=tokenizer,
    )
    history = trainer.train()
    trainer.save_model(directory / f"final{tag}")
    acc = trainer.accelerator
    if acc.is_main_process:
        (directory / f"result{tag}.json").write_text(
            json.dumps({"engine": engine_name(acc), "world": acc.num_processes, "history": history})
        )
    acc.wait_for_everyone()
    return trainer


def run_env(directory: Path, history_turns: int | None = None) -> PPOTrainer:
    """2 steps of gae on text FrozenLake episodes (up to 3 turns, a critic, the KV cache over the turns), then a
    greedy evaluation on 3 held-out seeds (rank 1's share padded). history_turns 0: a Markov policy, one row per
    turn (3 rows per episode, micro-batches of 3 rows)."""
    from rlhf.envs import make_frozenlake

    micro = 1 if history_turns is None else 3
    args = PPOConfig(
        output_dir=str(directory), max_steps=2, rollout_batch_size=2, mini_batch_size=2, micro_batch_size=micro,
        history_turns=history_turns,
        max_new_tokens=4, max_turns=3, learning_rate=1e-3, critic_learning_rate=1e-3, kl_coef=0.1,
        advantage_estimator="gae", critic_init="policy", eval_steps=2, eval_batch_size=2,
        disable_tqdm=True, plot_metrics=False,
    )  # fmt: skip
    trainer = PPOTrainer(str(LAKE_BASE), None, args, processing_class=LAKE, env_factory=lambda: make_frozenlake(map_in_prompt=True),
                         train_seeds=range(8), eval_seeds=[100, 101, 102])  # fmt: skip
    history = trainer.train()
    trainer.save_model(directory / "final")
    acc = trainer.accelerator
    if acc.is_main_process:
        (directory / "result.json").write_text(
            json.dumps({"engine": engine_name(acc), "world": acc.num_processes, "history": history})
        )
    acc.wait_for_everyone()
    return trainer


estimators = [a for a in sys.argv[2:] if a not in ("resume", "env_gae", "env_markov")]
for estimator in estimators:
    accelerator = run(estimator, out / estimator, eval_steps=2).accelerator
if "env_gae" in sys.argv[2:]:
    accelerator = run_env(out / "env_gae").accelerator
if "env_markov" in sys.argv[2:]:
    accelerator = run_env(out / "env_markov", history_turns=0).accelerator
if "resume" in sys.argv[2:]:
    run(estimators[0], out / "straight", max_steps=3)
    calls["crash_at"] = 3
    with contextlib.suppress(KeyboardInterrupt):
        run(estimators[0], out / "crashed", max_steps=3, save_steps=2)
    calls["crash_at"] = None
    resumed = run(
        estimators[0], out / "crashed", max_steps=3, tag="-resumed", resume_from_checkpoint="latest"
    )
    accelerator = resumed.accelerator
end_distributed(accelerator)
