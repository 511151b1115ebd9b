"""Catch: a ball falls from the top row of a `size x size` grid; the paddle on the bottom row moves left,
stays or moves right. +1 when the ball lands on the paddle, -1 when it misses (bsuite's Catch, Osband et al.
2020, on a square grid). The observation is the picture itself, a (1, size, size) uint8 image (0 empty, 255
ball or paddle), so a DQN has to learn it from pixels with a CNN."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

LEFT, STAY, RIGHT = 0, 1, 2


class CatchEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 8}

    def __init__(self, size: int = 10, render_mode: str | None = None) -> None:
        if size < 3:
            raise ValueError(f"size must be >= 3, got {size!r}")
        self.size = size
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, shape=(1, size, size), dtype=np.uint8)
        self.action_space = spaces.Discrete(3)
        self.ball_row = self.ball_col = self.paddle_col = 0

    def _obs(self) -> np.ndarray:
        img = np.zeros((1, self.size, self.size), dtype=np.uint8)  # (C, H, W)
        img[0, self.ball_row, self.ball_col] = 255
        img[0, self.size - 1, self.paddle_col] = 255
        return img

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.ball_row = 0
        self.ball_col = int(self.np_random.integers(self.size))
        self.paddle_col = self.size // 2
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (left), 1 (stay) or 2 (right), got {action!r}")
        self.paddle_col = int(np.clip(self.paddle_col + int(action) - 1, 0, self.size - 1))
        self.ball_row += 1
        terminated = self.ball_row == self.size - 1
        reward = 0.0
        if terminated:
            reward = 1.0 if self.ball_col == self.paddle_col else -1.0
        return self._obs(), reward, terminated, False, {"caught": reward > 0} if terminated else {}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        scale = 16
        img = np.repeat(np.repeat(self._obs()[0], scale, axis=0), scale, axis=1)  # (H*s, W*s)
        rgb = np.stack([img, img, img], axis=-1)  # (H*s, W*s, 3)
        rgb[(self.size - 1) * scale :, :, 1:] //= 2  # paddle row in red
        return rgb
