"""Solve a generated maze with dynamic programming and print it with the greedy path:

python -m classic.tabular --size 10 --maze_seed 3 --loop_fraction 0.2 --method policy_iteration
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym

import classic.envs  # noqa: F401  (registers rlbook/Maze-v0)
from classic.cli import parse_config, parse_config_or_exit
from classic.common import check_positive, check_unit_interval
from classic.envs.maze import bfs_distance
from classic.tabular.dp import policy_iteration, value_iteration


@dataclass
class MazeDemoConfig:
    """Solve rlbook/Maze-v0 with value or policy iteration and print the greedy path."""

    size: int = field(default=8, metadata={"help": "maze is size x size cells"})
    maze_seed: int = field(default=0, metadata={"help": "seed of the maze generator"})
    loop_fraction: float = field(default=0.1, metadata={"help": "fraction of inner walls removed (loops)"})
    gamma: float = field(default=1.0, metadata={"help": "discount; 1 makes V(start) = -path length"})
    method: Literal["value_iteration", "policy_iteration"] = field(
        default="value_iteration", metadata={"help": "DP algorithm (S&B 4.4 or 4.3)"}
    )

    def __post_init__(self) -> None:
        check_positive("size", self.size)
        check_unit_interval("loop_fraction", self.loop_fraction)
        check_unit_interval("gamma", self.gamma)


def main(argv: list[str] | None = None) -> str:
    return solve_and_print(parse_config(MazeDemoConfig, argv))


def solve_and_print(cfg: MazeDemoConfig) -> str:
    env = gym.make("rlbook/Maze-v0", size=cfg.size, maze_seed=cfg.maze_seed, loop_fraction=cfg.loop_fraction)
    maze = env.unwrapped
    solve = value_iteration if cfg.method == "value_iteration" else policy_iteration
    V, policy = solve(env, gamma=cfg.gamma)
    s, _ = env.reset(seed=0)
    path, done = [s], False
    while not done:
        s, _, terminated, truncated, _ = env.step(policy[s])
        path.append(s)
        done = terminated or truncated
    report = (
        maze.ascii(path[:-1])
        + f"{cfg.method}: greedy path {len(path) - 1} steps (BFS shortest {bfs_distance(maze.wall, maze.start, maze.goal)}), "
        f"V(start) = {V[path[0]]:.3f}\n"
    )
    print(report, end="")
    return report


if __name__ == "__main__":
    solve_and_print(parse_config_or_exit(MazeDemoConfig, "python -m classic.tabular"))
