"""A grid maze generated from a seed: the smallest env where value iteration visibly finds the shortest path.

Layout: `size` x `size` cells carved by a randomised depth-first search (a "perfect" maze with one path between
any two cells), then a fraction `loop_fraction` of the remaining inner walls knocked out so that several paths
compete and the shortest one is not the only one. The grid is (2*size+1) x (2*size+1) with walls between cells.

Observation: the index of the agent's free cell (Discrete(n_free)); actions as FrozenLake: 0 left, 1 down,
2 right, 3 up; bumping into a wall stays put. Reward -1 per step, episode terminates on reaching the goal, so an
undiscounted return is minus the path length. The model `P` is in gymnasium's toy-text format.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np

MOVES = [(0, -1), (1, 0), (0, 1), (-1, 0)]  # (drow, dcol) for left, down, right, up


def generate_maze(size: int, seed: int, loop_fraction: float = 0.1) -> np.ndarray:
    """Bool grid (2*size+1, 2*size+1), True = wall."""
    rng = np.random.default_rng(seed)
    n = 2 * size + 1
    wall = np.ones((n, n), dtype=bool)
    visited = np.zeros((size, size), dtype=bool)
    stack = [(0, 0)]
    visited[0, 0] = True
    wall[1, 1] = False
    while stack:  # iterative randomised DFS ("recursive backtracker")
        r, c = stack[-1]
        options = [
            (r + dr, c + dc)
            for dr, dc in MOVES
            if 0 <= r + dr < size and 0 <= c + dc < size and not visited[r + dr, c + dc]
        ]
        if not options:
            stack.pop()
            continue
        nr, nc = options[rng.integers(len(options))]
        wall[2 * r + 1 + (nr - r), 2 * c + 1 + (nc - c)] = False
        wall[2 * nr + 1, 2 * nc + 1] = False
        visited[nr, nc] = True
        stack.append((nr, nc))
    # inner walls that separate two cells (odd/even pattern); opening some creates loops
    inner = [(r, c) for r in range(1, n - 1) for c in range(1, n - 1) if wall[r, c] and (r % 2) != (c % 2)]
    for i in rng.permutation(len(inner))[: int(loop_fraction * len(inner))]:
        wall[inner[i]] = False
    return wall


def bfs_distance(wall: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> int:
    """Shortest number of moves from start to goal (the reference the tests compare value iteration with)."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            return dist[cell]
        for dr, dc in MOVES:
            nxt = (cell[0] + dr, cell[1] + dc)
            if not wall[nxt] and nxt not in dist:
                dist[nxt] = dist[cell] + 1
                queue.append(nxt)
    raise ValueError("goal not reachable")


class MazeEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array", "ansi"], "render_fps": 8}

    def __init__(
        self, size: int = 8, maze_seed: int = 0, loop_fraction: float = 0.1, render_mode: str | None = None
    ) -> None:
        if size < 2:
            raise ValueError(f"size must be >= 2, got {size}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.wall = generate_maze(size, maze_seed, loop_fraction)
        self.render_mode = render_mode
        self.cells = [tuple(rc) for rc in np.argwhere(~self.wall)]  # state index -> (row, col)
        self.index = {cell: i for i, cell in enumerate(self.cells)}
        self.start = (1, 1)
        self.goal = (2 * size - 1, 2 * size - 1)
        self.observation_space = gym.spaces.Discrete(len(self.cells))
        self.action_space = gym.spaces.Discrete(4)
        # Toy-text model; the goal is absorbing with reward 0 (like FrozenLake's terminal states).
        self.P: dict[int, dict[int, list[tuple[float, int, float, bool]]]] = {}
        for s, cell in enumerate(self.cells):
            self.P[s] = {a: [self._transition(cell, a)] for a in range(4)}
        self.s = self.index[self.start]

    def _transition(self, cell: tuple[int, int], a: int) -> tuple[float, int, float, bool]:
        if cell == self.goal:
            return (1.0, self.index[cell], 0.0, True)
        nxt = (cell[0] + MOVES[a][0], cell[1] + MOVES[a][1])
        if self.wall[nxt]:
            nxt = cell
        return (1.0, self.index[nxt], -1.0, nxt == self.goal)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.s = self.index[self.start]
        return self.s, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        _, s_next, reward, terminated = self.P[self.s][int(action)][0]
        self.s = s_next
        return s_next, reward, terminated, False, {}

    def ascii(self, path: list[int] | None = None) -> str:
        """The maze as text: # wall, S start, G goal, A agent, . cells on `path` (a list of states)."""
        chars = np.where(self.wall, "#", " ").astype("<U1")
        for s in path or []:
            chars[self.cells[s]] = "."
        chars[self.start], chars[self.goal] = "S", "G"
        chars[self.cells[self.s]] = "A"
        return "\n".join("".join(row) for row in chars) + "\n"

    def render(self) -> np.ndarray | str | None:
        if self.render_mode == "ansi":
            return self.ascii()
        if self.render_mode == "rgb_array":
            img = np.where(self.wall[..., None], 40, 235).astype(np.uint8).repeat(3, axis=2)
            img[self.goal] = (40, 180, 60)
            img[self.cells[self.s]] = (220, 50, 50)
            return img.repeat(8, axis=0).repeat(8, axis=1)  # 8 px per cell
        return None
