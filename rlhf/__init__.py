"""PPO, REINFORCE, RLOO and GRPO for causal language models, built on accelerate."""

from rlhf.config import PPOConfig
from rlhf.trainer import PPOTrainer

__all__ = ["PPOConfig", "PPOTrainer"]
