"""Reward-model training with TRL's RewardTrainer (stage 2 of the TL;DR pipeline: SFT -> reward model -> PPO).

Launch (one GPU; see recipes/accelerate/ for the others), after recipes/tldr_sft.yaml has written runs/tldr_sft:

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/reward_model.py \
        --config recipes/tldr_reward.yaml

or, the same run: `rlhf reward --config recipes/tldr_reward.yaml`. The model is the SFT model with a one-label
score head, trained with the Bradley-Terry loss -log σ(r_chosen − r_rejected) on chosen/rejected pairs (an optional
`prompt` column is prepended to both); the result is what rlhf's reward models expect (num_labels=1, pad_token_id
set). Every field can be overridden on the command line (`--max_steps 10 --output_dir runs/try`); `--help` lists
them. The recipe itself is rlhf/trl_stages.py (run_reward).
"""

from classic.cli import parse_config_or_exit
from rlhf.trl_stages import RewardRecipeConfig, run_reward

if __name__ == "__main__":
    run_reward(parse_config_or_exit(RewardRecipeConfig, "recipes/reward_model.py"))
