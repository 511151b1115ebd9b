"""Format demonstrations for the FrozenLake agent: random moves, a warm start that says nothing about the task.

    python recipes/frozenlake_demos.py --output runs/frozenlake_demos.jsonl    # 32 episodes, 2 rows each
    rlhf sft   --config recipes/frozenlake_sft.yaml --model_name_or_path MODEL  # TRL's SFTTrainer on them
    rlhf train --config recipes/frozenlake_agent.yaml --model_name_or_path runs/frozenlake_sft

Each episode starts on a random square (exploring starts) and is played with moves drawn uniformly from left,
down, right, up whatever the square; each row is one of its turns (the dialogue so far, then that turn's move).
A model trained on them answers with one move word and still chooses among the four about uniformly: which move
a square calls for is left to RL (docs/rlhf/agents.md). The seeds (0 to num_seeds - 1) are training seeds of
recipes/frozenlake_agent.yaml, whose held-out seeds start at 100000. An existing file is not overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from classic.cli import exit_on_bad_input, parse_config_or_exit
from rlhf.envs import make_frozenlake
from rlhf.envs.games import GRID_MOVES
from rlhf.envs.text import random_reply_demonstrations, require_new_file, write_demonstrations


@dataclass
class DemosConfig:
    output: str = field(metadata={"help": "the JSON-lines file to write (must not exist yet)"})
    num_seeds: int = field(default=32, metadata={"help": "episodes, one per seed from 0"})
    rows_per_episode: int = field(default=2, metadata={"help": "turns of each episode kept as rows"})
    max_turns: int = field(
        default=8, metadata={"help": "moves per episode at most (the RL recipe's max_turns)"}
    )
    env_kwargs: dict = field(
        default_factory=lambda: {
            "map_in_prompt": True,
            "neighbours": True,
            "one_move": True,
            "shaping": True,
            "random_start": True,
        },
        metadata={
            "help": "make_frozenlake arguments: the RL recipe's (so the prompts match), from random squares"
        },
    )

    def __post_init__(self) -> None:
        if self.num_seeds <= 0:
            raise ValueError(f"num_seeds must be positive, got {self.num_seeds}")
        require_new_file(self.output)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config_or_exit(DemosConfig, "recipes/frozenlake_demos.py", argv)
    with exit_on_bad_input("recipes/frozenlake_demos.py"):
        try:
            env = make_frozenlake(**cfg.env_kwargs)
        except TypeError as err:  # an unknown keyword
            raise ValueError(f"env_kwargs={cfg.env_kwargs}: {err}") from None
        rows = random_reply_demonstrations(
            env, range(cfg.num_seeds), GRID_MOVES, cfg.max_turns, cfg.rows_per_episode
        )
    print(f"{len(rows)} demonstrations -> {write_demonstrations(cfg.output, rows)}")


if __name__ == "__main__":
    main()
