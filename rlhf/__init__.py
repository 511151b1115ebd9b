"""PPO, REINFORCE, RLOO and GRPO for causal language models, built on accelerate."""
