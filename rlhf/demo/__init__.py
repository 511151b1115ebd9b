"""Offline RLHF demo: SFT → reward model → PPO → evaluation on a generated review corpus (`rlhf-demo`)."""
