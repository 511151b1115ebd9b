"""The RL textbook as runnable code: tabular methods, DQN, REINFORCE, A2C and PPO on gymnasium."""

from classic import functional

__all__ = ["functional"]
