"""Demonstrations of the calculator tool call, for a format warm-start before RL (docs/rlhf/agents.md).

    python recipes/calculator_demos.py --output runs/calculator_demos.jsonl      # 32 rows, seeds 0-31
    rlhf sft   --config recipes/calculator_sft.yaml --model_name_or_path MODEL    # TRL's SFTTrainer on them
    rlhf train --config recipes/calculator_agent.yaml --model_name_or_path runs/calculator_sft

Each row is one episode's first turn (the system prompt and the question, as chat messages) with the reply
`calculate: <the question's expression>` as its completion: the call only, never an answer, so what RL then
learns is to read the calculator's result back and answer with it (`--answers true` adds the answer turn: then
supervised learning alone solves the env, see docs/rlhf/agents.md). The seeds (0 to num_seeds - 1) are training
seeds of recipes/calculator_agent.yaml, whose held-out questions start at seed 100000. An existing file is not
overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from classic.cli import exit_on_bad_input, parse_config_or_exit
from rlhf.envs.calculator import tool_call_demonstrations
from rlhf.envs.text import require_new_file, write_demonstrations


@dataclass
class DemosConfig:
    output: str = field(metadata={"help": "the JSON-lines file to write (must not exist yet)"})
    num_seeds: int = field(default=32, metadata={"help": "episodes, one per seed from 0"})
    answers: bool = field(
        default=False,
        metadata={
            "help": "also demonstrate the answer after the calculator's reply (a second row per episode)"
        },
    )
    env_kwargs: dict = field(
        default_factory=lambda: {"max_tool_calls": 2},
        metadata={"help": "CalculatorEnv arguments; the same as the RL recipe's, so the prompts match"},
    )

    def __post_init__(self) -> None:
        if self.num_seeds <= 0:
            raise ValueError(f"num_seeds must be positive, got {self.num_seeds}")
        require_new_file(self.output)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config_or_exit(DemosConfig, "recipes/calculator_demos.py", argv)
    with exit_on_bad_input("recipes/calculator_demos.py"):
        try:
            rows = tool_call_demonstrations(range(cfg.num_seeds), cfg.answers, **cfg.env_kwargs)
        except TypeError as err:  # an unknown keyword
            raise ValueError(f"env_kwargs={cfg.env_kwargs}: {err}") from None
    print(f"{len(rows)} demonstrations -> {write_demonstrations(cfg.output, rows)}")


if __name__ == "__main__":
    main()
