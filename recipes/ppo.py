"""RL fine-tuning of a causal LM with rlhf.PPOTrainer: PPO with a critic, RLOO or GRPO, full or LoRA.

Launch (one GPU; see recipes/accelerate/ for multi-GPU, FSDP, DeepSpeed and CPU):

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/ppo.py \
        --config recipes/gpt2_imdb_ppo.yaml

or, the same run: `rlhf train --config recipes/gpt2_imdb_ppo.yaml`. Every field of `PPORecipeConfig` (the
trainer's PPOConfig plus model, dataset, task, reward and LoRA fields) can be set in the YAML file or overridden on
the command line, e.g. `--max_steps 10 --output_dir runs/try --dataset_name ./imdb`; `python recipes/ppo.py --help`
lists them. The recipe itself is rlhf/train_command.py: fail-fast checks → prompts → rewards → PPOTrainer → save.
A YAML with an `env:` key (recipes/*_agent.yaml) trains an agent in a text env instead (rlhf/agent_command.py).
"""

import sys

from rlhf.agent_command import train_main

if __name__ == "__main__":
    train_main(sys.argv[1:], "recipes/ppo.py")  # an agent recipe when the YAML names an `env`
