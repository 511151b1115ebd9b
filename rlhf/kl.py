"""KL to the reference model: per-token estimators and the fixed / adaptive coefficient controllers.

With r = q/p (q the reference, p the policy, tokens sampled from p), Schulman's "Approximating KL
Divergence" (2020) estimators of KL(p || q):
    k1 = -log r                 unbiased; the per-token reward penalty of RLHF PPO (Ziegler et al. 2019)
    k2 = 0.5 * (log r)^2        biased, but its gradient on policy samples is the KL's gradient
    k3 = r - log r - 1          unbiased, always >= 0, lower variance; GRPO's KL-in-loss term
As a *loss* term the choice matters: the expected gradient of k1 with respect to the policy is zero whatever the
reference (E_p[grad log p] = 0), so k1 in the loss regularises nothing; k2 and k3 pull towards the reference.
"""

from __future__ import annotations

import torch


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate, same shape as the inputs."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # clamp: exp of a large negative log-ratio difference overflows to inf in float32
        neg = (-log_ratio).clamp(max=20.0)
        return torch.exp(neg) - neg - 1.0
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")


class FixedKLController:
    """beta stays at its initial value."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. 2019 (eq. 2): beta <- beta * (1 + K * e), with the error
    e = clip(KL / target - 1, -0.2, 0.2) and K = n_samples / horizon."""

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
