"""Run by test_ddp.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo): rank 1's reward function
never returns (it sleeps far longer than ddp_timeout)."""

import sys
import time

import datasets
import torch

from rlhf import PPOConfig, PPOTrainer
from rlhf.tiny import build_causal_lm, build_tokenizer

torch.set_num_threads(1)
tokenizer = build_tokenizer(["the cat sat on the mat", "a dog ran in the park"] * 20, vocab_size=300)
trainer = None


def stalls_on_rank_1(prompts, completions, **columns):
    if trainer.accelerator.process_index == 1:
        time.sleep(600)
    return [0.0] * len(completions)


args = PPOConfig(
    output_dir=sys.argv[1],
    max_steps=2,
    rollout_batch_size=2,
    mini_batch_size=2,
    micro_batch_size=2,
    max_new_tokens=4,
    advantage_estimator="reinforce_pp",
    ddp_timeout=5,
    disable_tqdm=True,
    plot_metrics=False,
)
dataset = datasets.Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})
trainer = PPOTrainer(build_causal_lm(tokenizer), stalls_on_rank_1, args, dataset, processing_class=tokenizer)
trainer.train()
