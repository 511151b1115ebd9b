"""Robot navigation: a 2D point robot with range sensors drives to a goal around circular obstacles.

    env = gym.make("rlbook/Navigation-v0")            # 8 compass moves
    env = gym.make("rlbook/NavigationContinuous-v0")  # velocity command in [-1, 1]^2
    env = gym.make("rlbook/Navigation-v0", render_mode="rgb_array")

Arena [0, 1]^2. The robot starts on the left, the goal lies on the right, three fixed discs block the straight
line. Observation (12,): position (x, y), goal offset (gx - x, gy - y), 8 range readings (distance to the
nearest obstacle or wall along 8 compass rays, divided by the sensor range and capped at 1). Reward: 10 x the
decrease in distance to the goal (shaping, a potential difference, Ng et al. 1999), -0.01 per step, -0.1 when
a move is blocked (collision: the robot stays put), +1 on reaching the goal (terminates). Time limit 100
steps (truncation). `info["is_success"]` says whether the goal was reached.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

OBSTACLES = np.array([[0.5, 0.5, 0.17], [0.35, 0.85, 0.1], [0.65, 0.15, 0.1]])  # (x, y, radius)
NUM_RAYS, SENSOR_RANGE, MAX_SPEED, GOAL_RADIUS = 8, 0.3, 0.05, 0.06
_ANGLES = np.arange(NUM_RAYS) * 2 * np.pi / NUM_RAYS
RAY_DIRS = np.round(np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1), 12)  # (R, 2); also the 8 moves


class NavigationEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, continuous: bool = False, render_mode: str | None = None) -> None:
        self.continuous, self.render_mode = continuous, render_mode
        low = np.array([0, 0, -1, -1] + [0] * NUM_RAYS, dtype=np.float32)
        high = np.array([1, 1, 1, 1] + [1] * NUM_RAYS, dtype=np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        if continuous:
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        else:
            self.action_space = gym.spaces.Discrete(NUM_RAYS)
        self.pos = np.zeros(2)
        self.goal = np.zeros(2)

    @staticmethod
    def collides(p: np.ndarray) -> bool:
        if np.any(p < 0.0) or np.any(p > 1.0):
            return True
        return bool(np.any(np.linalg.norm(OBSTACLES[:, :2] - p, axis=1) < OBSTACLES[:, 2]))

    def ranges(self) -> np.ndarray:
        """Ray casting: for ray p + t d and disc (c, r), the nearest hit is t = b - sqrt(b^2 - |p-c|^2 + r^2)
        with b = d.(c - p); the walls give t = (wall - p) / d."""
        to_c = OBSTACLES[None, :, :2] - self.pos  # (1, K, 2)
        b = (RAY_DIRS[:, None, :] * to_c).sum(-1)  # (R, K)
        disc = b**2 - (to_c**2).sum(-1) + OBSTACLES[None, :, 2] ** 2
        t_disc = np.where((disc >= 0) & (b > 0), b - np.sqrt(np.maximum(disc, 0)), np.inf)
        with np.errstate(divide="ignore"):
            t_wall = np.where(
                RAY_DIRS > 0, (1 - self.pos) / RAY_DIRS, np.where(RAY_DIRS < 0, -self.pos / RAY_DIRS, np.inf)
            )
        t = np.minimum(t_disc.min(1), t_wall.min(1))  # (R,)
        return np.minimum(t / SENSOR_RANGE, 1.0)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal - self.pos, self.ranges()]).astype(np.float32)

    def _sample_free(self, x_low: float, x_high: float) -> np.ndarray:
        while True:
            p = self.np_random.uniform([x_low, 0.05], [x_high, 0.95])
            if not self.collides(p):
                return p

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.goal = self._sample_free(0.05, 0.2), self._sample_free(0.8, 0.95)
        return self._obs(), {"is_success": False}

    def step(self, action: np.ndarray | int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.continuous:
            move = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0) * MAX_SPEED
        else:
            move = RAY_DIRS[int(action)] * MAX_SPEED
        dist = np.linalg.norm(self.goal - self.pos)
        new_pos = self.pos + move
        blocked = self.collides(new_pos)
        if not blocked:
            self.pos = new_pos
        new_dist = np.linalg.norm(self.goal - self.pos)
        success = bool(new_dist < GOAL_RADIUS)
        reward = 10.0 * (dist - new_dist) - 0.01 - 0.1 * blocked + 1.0 * success
        return self._obs(), float(reward), success, False, {"is_success": success}

    def render(self, size: int = 256) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        ys, xs = np.mgrid[0:size, 0:size]
        px, py = (xs + 0.5) / size, 1.0 - (ys + 0.5) / size  # pixel centres in arena coordinates, y up
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        for cx, cy, r in OBSTACLES:
            img[(px - cx) ** 2 + (py - cy) ** 2 < r**2] = (90, 90, 90)
        img[(px - self.goal[0]) ** 2 + (py - self.goal[1]) ** 2 < GOAL_RADIUS**2] = (40, 170, 60)
        img[(px - self.pos[0]) ** 2 + (py - self.pos[1]) ** 2 < 0.02**2] = (30, 80, 220)
        return img
