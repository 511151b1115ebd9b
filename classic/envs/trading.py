"""Trading: one asset, a long/flat position, over a synthetic price series generated from the reset seed.

The log-return follows a hidden two-state Markov regime (bull: drift +mu, bear: drift -mu, switching with
probability `switch_prob` per step) plus Gaussian noise: r_t = drift(regime_t) + sigma * eps_t. The two regimes
are symmetric, so buy-and-hold earns nothing on average; the recent returns in the observation carry the
learnable signal (which regime we are in). Actions: 0 sell (go flat), 1 hold (keep the position), 2 buy (go
long). Reward = change in portfolio value (starting at 1.0), minus `cost` times the value traded.

Observation (float32, shape (window + 1,)): the last `window` log-returns divided by sigma, then the position.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SELL, HOLD, BUY = 0, 1, 2


class TradingEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        episode_length: int = 200,
        window: int = 10,
        mu: float = 0.003,
        sigma: float = 0.01,
        switch_prob: float = 0.02,
        cost: float = 0.001,
        render_mode: str | None = None,
    ) -> None:
        self.episode_length, self.window = episode_length, window
        self.mu, self.sigma, self.switch_prob, self.cost = mu, sigma, switch_prob, cost
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(window + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(3)

    def _series(self) -> np.ndarray:
        """window + episode_length log-returns of the regime-switching process."""
        n = self.window + self.episode_length
        regime = np.empty(n)
        regime[0] = self.np_random.choice([-1.0, 1.0])
        switches = self.np_random.random(n) < self.switch_prob
        for t in range(1, n):
            regime[t] = -regime[t - 1] if switches[t] else regime[t - 1]
        return self.mu * regime + self.sigma * self.np_random.standard_normal(n)

    def _obs(self) -> np.ndarray:
        recent = self.log_returns[self.t : self.t + self.window] / self.sigma
        return np.append(recent, self.position).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.log_returns = self._series()
        self.prices = np.exp(np.concatenate([[0.0], np.cumsum(self.log_returns)]))
        self.t, self.position, self.value = 0, 0, 1.0
        self.values = [self.value]
        return self._obs(), {"value": self.value}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (sell), 1 (hold) or 2 (buy), got {action!r}")
        new_position = {SELL: 0, HOLD: self.position, BUY: 1}[int(action)]
        old_value = self.value
        self.value -= self.cost * abs(new_position - self.position) * self.value
        self.position = new_position
        # the next return is revealed after acting: index window + t is the first return not yet observed
        simple_return = np.expm1(self.log_returns[self.window + self.t])
        self.value *= 1.0 + self.position * simple_return
        self.t += 1
        self.values.append(self.value)
        # the trading period is part of the task: its end is a true termination, nothing follows it
        terminated = self.t == self.episode_length
        info = {"value": self.value, "buy_and_hold": self.buy_and_hold_value()}
        return self._obs(), self.value - old_value, terminated, False, info

    def buy_and_hold_value(self) -> float:
        """Value of buying at the first step (paying the cost once) and holding until now."""
        start, now = self.prices[self.window], self.prices[self.window + self.t]
        return (1.0 - self.cost) * now / start

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
        ax.plot(self.prices[self.window : self.window + self.t + 1] / self.prices[self.window], label="price")
        ax.plot(self.values, label="portfolio")
        ax.legend()
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        plt.close(fig)
        return rgb
