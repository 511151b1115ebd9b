"""Run by test_engines.py under `accelerate launch --config_file recipes/accelerate/<engine>.yaml --num_processes 2`
(CPU, gloo): 2 steps of each estimator named on the command line on a tiny GPT-2, then save_model; rank 0 writes
the final policy (and critic) weights and the metrics for the test to compare across engines."""

import json
import sys
from pathlib import Path

import datasets
import torch

from recipes.common import end_distributed
from rlhf import PPOConfig, PPOTrainer
from rlhf.engines import engine_name
from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer

out = Path(sys.argv[1])
torch.set_num_threads(1)
tokenizer = build_tokenizer(
    ["the cat sat on the mat", "a dog ran in the park", "good good"] * 20, vocab_size=300
)


def count_good(prompts, completions, **columns):
    return [float(c.count("good")) + len(c) / 100 for c in completions]


for estimator in sys.argv[2:]:
    args = PPOConfig(
        output_dir=str(out / estimator),
        max_steps=2,
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
    )
    trainer = PPOTrainer(
        build_causal_lm(tokenizer, seed=0),
        [build_reward_model(tokenizer, seed=1), count_good],
        args,
        datasets.Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(16)]}),
        tokenizer,
    )
    history = trainer.train()
    trainer.save_model(out / estimator / "final")
    acc = trainer.accelerator
    if acc.is_main_process:
        (out / estimator / "result.json").write_text(
            json.dumps({"engine": engine_name(acc), "world": acc.num_processes, "history": history})
        )
    acc.wait_for_everyone()
    accelerator = trainer.accelerator
    del trainer
end_distributed(accelerator)
