"""Snake on a small grid, with a compact discrete observation that makes it tabular.

Actions are relative to the heading: 0 straight, 1 turn left, 2 turn right. Reward +1 for food, -1 for dying
(wall or own body), 0 otherwise; the episode terminates on death or a full board, and is truncated after
`starve_steps` steps without food (so a policy that circles forever cannot run forever).

Observations (`obs_mode`):
- "compact" (default): one integer in Discrete(288) = danger straight/left/right (3 bits, 8) x food direction
  (sign of row and column offset, 9) x heading (4): the classic hand-made Snake state, small enough for a
  Q table, enough to learn to chase food and not bump into things (but not to avoid trapping itself).
- "grid": float32 planes (3, size, size): body, head, food, for function approximation.
`info["food"]` counts food eaten this episode.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

HEADINGS = [(-1, 0), (0, 1), (1, 0), (0, -1)]  # up, right, down, left: clockwise, so right turn is +1
N_COMPACT = 8 * 9 * 4


class SnakeEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 10}

    def __init__(
        self,
        size: int = 8,
        obs_mode: str = "compact",
        starve_steps: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if size < 4:
            raise ValueError(f"size must be >= 4, got {size}")
        if obs_mode not in ("compact", "grid"):
            raise ValueError(f"obs_mode must be 'compact' or 'grid', got {obs_mode!r}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.size, self.obs_mode, self.render_mode = size, obs_mode, render_mode
        self.starve_steps = starve_steps or 2 * size * size
        self.action_space = gym.spaces.Discrete(3)
        if obs_mode == "compact":
            self.observation_space = gym.spaces.Discrete(N_COMPACT)
        else:
            self.observation_space = gym.spaces.Box(0.0, 1.0, (3, size, size), np.float32)
        self.body: deque[tuple[int, int]] = deque()

    def _place_food(self) -> None:
        occupied = set(self.body)
        free = [(r, c) for r in range(self.size) for c in range(self.size) if (r, c) not in occupied]
        self.food = free[self.np_random.integers(len(free))] if free else None

    def _deadly(self, cell: tuple[int, int]) -> bool:
        r, c = cell
        # the tail cell is about to move away, so it is not deadly (unless the snake eats, a rare corner case)
        return not (0 <= r < self.size and 0 <= c < self.size) or (
            cell in self.body and cell != self.body[-1]
        )

    def _obs(self) -> int | np.ndarray:
        head = self.body[0]
        if self.obs_mode == "grid":
            planes = np.zeros((3, self.size, self.size), np.float32)
            for cell in self.body:
                planes[(0, *cell)] = 1.0
            planes[(1, *head)] = 1.0
            if self.food is not None:
                planes[(2, *self.food)] = 1.0
            return planes
        danger = 0
        for bit, turn in enumerate((0, -1, 1)):  # straight, left, right
            dr, dc = HEADINGS[(self.heading + turn) % 4]
            danger |= self._deadly((head[0] + dr, head[1] + dc)) << bit
        fr, fc = self.food if self.food is not None else head
        food_dir = (int(np.sign(fr - head[0])) + 1) * 3 + int(np.sign(fc - head[1])) + 1
        return (danger * 9 + food_dir) * 4 + self.heading

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int | np.ndarray, dict]:
        super().reset(seed=seed)
        mid = self.size // 2
        self.heading = int(self.np_random.integers(4))
        dr, dc = HEADINGS[self.heading]
        self.body = deque([(mid, mid), (mid - dr, mid - dc)])  # length 2, tail behind the head
        self.eaten, self.since_food = 0, 0
        self._place_food()
        return self._obs(), {"food": 0}

    def step(self, action: int) -> tuple[int | np.ndarray, float, bool, bool, dict]:
        self.heading = (self.heading + (0, -1, 1)[int(action)]) % 4
        dr, dc = HEADINGS[self.heading]
        head = (self.body[0][0] + dr, self.body[0][1] + dc)
        if self._deadly(head):
            return self._obs(), -1.0, True, False, {"food": self.eaten}
        self.body.appendleft(head)
        reward, terminated = 0.0, False
        if head == self.food:
            reward, self.eaten, self.since_food = 1.0, self.eaten + 1, 0
            self._place_food()
            terminated = self.food is None  # board full: the snake has won
        else:
            self.body.pop()
            self.since_food += 1
        truncated = self.since_food >= self.starve_steps
        return self._obs(), reward, terminated, truncated, {"food": self.eaten}

    def render(self) -> np.ndarray | str | None:
        grid = np.full((self.size, self.size), ".", dtype="<U1")
        for cell in self.body:
            grid[cell] = "o"
        grid[self.body[0]] = "@"
        if self.food is not None:
            grid[self.food] = "*"
        if self.render_mode == "ansi":
            return "\n".join("".join(row) for row in grid) + "\n"
        if self.render_mode == "rgb_array":
            colours = {".": (20, 20, 20), "o": (60, 170, 60), "@": (120, 230, 120), "*": (220, 50, 50)}
            img = np.array([[colours[ch] for ch in row] for row in grid], dtype=np.uint8)
            return img.repeat(16, axis=0).repeat(16, axis=1)  # 16 px per cell
        return None
