"""Supervised fine-tuning with TRL's SFTTrainer (stage 1 of the TL;DR pipeline: SFT -> reward model -> PPO).

Launch (one GPU; see recipes/accelerate/ for the others):

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/sft.py \
        --config recipes/tldr_sft.yaml

or, the same run: `rlhf sft --config recipes/tldr_sft.yaml`. The dataset has prompt/completion columns (loss on
the completion only) or a `text` column; the tokenizer gets a PAD token distinct from EOS and is saved with the
model, so the reward-model and PPO stages reuse it. Every field can be overridden on the command line
(`--max_steps 10 --output_dir runs/try`); `--help` lists them. The recipe itself is rlhf/trl_stages.py (run_sft).
"""

from classic.cli import parse_config_or_exit
from rlhf.trl_stages import SFTRecipeConfig, run_sft

if __name__ == "__main__":
    run_sft(parse_config_or_exit(SFTRecipeConfig, "recipes/sft.py"))
