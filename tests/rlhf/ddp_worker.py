"""Run by test_ddp.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo)."""

import json
import sys
from pathlib import Path

import datasets
import torch

from recipes.common import end_distributed
from rlhf import PPOConfig, PPOTrainer
from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer

out = Path(sys.argv[1])
torch.set_num_threads(1)
tokenizer = build_tokenizer(
    ["the cat sat on the mat", "a dog ran in the park", "good good"] * 20, vocab_size=300
)
seen = []


def count_good(prompts, completions, **columns):
    seen.extend(prompts)
    return [float(c.count("good")) + len(c) / 100 for c in completions]


for estimator in sys.argv[2:]:
    seen.clear()
    args = PPOConfig(
        output_dir=str(out / estimator),
        max_steps=2,
        rollout_batch_size=4,
        num_generations=2,
        mini_batch_size=4,
        micro_batch_size=2,
        max_new_tokens=6,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        num_ppo_epochs=1,
        advantage_estimator=estimator,
        disable_tqdm=True,
        save_steps=1,
    )
    prompts = [f"prompt {i}" for i in range(16)]
    trainer = PPOTrainer(
        build_causal_lm(tokenizer),
        [build_reward_model(tokenizer), count_good],
        args,
        datasets.Dataset.from_dict({"prompt": prompts}),
        tokenizer,
    )
    history = trainer.train()
    weights = trainer.accelerator.unwrap_model(trainer.policy).transformer.wte.weight.detach()
    gathered = trainer.accelerator.gather(weights[None])
    rank = trainer.accelerator.process_index
    (out / estimator / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": trainer.accelerator.num_processes,
                "prompts": sorted(set(seen)),
                "weights_equal_across_ranks": bool(torch.equal(gathered[0], gathered[-1])),
                "history": history,
            }
        )
    )
accelerator = trainer.accelerator
del trainer
end_distributed(accelerator)  # as the recipes end: models released before the process group
