"""DPO with TRL's DPOTrainer: preference pairs straight into the policy, no reward model, no PPO (Rafailov et al.
2023; in the TL;DR pipeline it replaces stages 2 and 3 after recipes/tldr_sft.yaml has written runs/tldr_sft).

Launch (one GPU; see recipes/accelerate/ for the others):

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml recipes/dpo.py \
        --config recipes/tldr_dpo.yaml

or, the same run: `rlhf dpo --config recipes/tldr_dpo.yaml`. The dataset has `chosen` and `rejected` columns and
usually `prompt` (without it, TRL takes their shared beginning as the prompt); the starting model is also the
frozen reference. Every field can be overridden on the command line (`--beta 0.3 --max_steps 10 --output_dir
runs/try`); `--help` lists them. The recipe itself is rlhf/trl_stages.py (run_dpo). How DPO compares with PPO and
best-of-n on one gold-vs-KL frontier: `rlhf-demo --frontier` (docs/rlhf/demo.md).
"""

from classic.cli import parse_config_or_exit
from rlhf.trl_stages import DPORecipeConfig, run_dpo

if __name__ == "__main__":
    run_dpo(parse_config_or_exit(DPORecipeConfig, "recipes/dpo.py"))
