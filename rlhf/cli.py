"""`rlhf`: one command for the recipes, the demo and the plots.

    rlhf train  --config recipes/gpt2_imdb_ppo.yaml [--field value ...]    # = recipes/ppo.py (rlhf.train_command)
    rlhf train  --config recipes/frozenlake_agent.yaml [...]                # an env agent (rlhf.agent_command)
    rlhf sft    --config recipes/tldr_sft.yaml [...]                        # = recipes/sft.py (rlhf.trl_stages)
    rlhf reward --config recipes/tldr_reward.yaml [...]                     # = recipes/reward_model.py
    rlhf dpo    --config recipes/tldr_dpo.yaml [...]                        # = recipes/dpo.py
    rlhf demo   [...]                                                       # = rlhf-demo
    rlhf bridge --models base=PATH trained=RUN_DIR [...]                    # textbook vs LM on FrozenLake maps
    rlhf plot   RUN_DIR                                                     # PNGs from RUN_DIR/metrics.jsonl
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m rlhf train --config ...

Fields are spelled `--field_name` or `--field-name`; `rlhf <command> --help` lists every field with its help.
"""

from __future__ import annotations

import sys

USAGE = __doc__.split("\n\n")[1]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage:\n{USAGE}")
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    from classic.cli import exit_on_bad_input, parse_config_or_exit

    if command == "train":
        from rlhf.agent_command import train_main  # a prompt dataset, or an env with `env:` (agents)

        train_main(rest)
    elif command == "sft":
        from rlhf.trl_stages import SFTRecipeConfig, run_sft

        run_sft(parse_config_or_exit(SFTRecipeConfig, "rlhf sft", rest))
    elif command == "reward":
        from rlhf.trl_stages import RewardRecipeConfig, run_reward

        run_reward(parse_config_or_exit(RewardRecipeConfig, "rlhf reward", rest))
    elif command == "dpo":
        from rlhf.trl_stages import DPORecipeConfig, run_dpo

        run_dpo(parse_config_or_exit(DPORecipeConfig, "rlhf dpo", rest))
    elif command == "bridge":
        from rlhf.bridge import main as bridge

        bridge(rest)
    elif command == "demo":
        from rlhf.demo.pipeline import main as demo

        demo(rest)
    elif command == "plot":
        if len(rest) != 1 or rest[0].startswith("-"):
            print("usage: rlhf plot RUN_DIR", file=sys.stderr)
            raise SystemExit(2)
        from rlhf.plots import plot_run

        with exit_on_bad_input("rlhf plot"):
            for path in plot_run(rest[0]):
                print(path)
    else:
        print(
            f"rlhf: error: unknown command {command!r}; expected train, sft, reward, dpo, demo, bridge or plot",
            file=sys.stderr,
        )
        raise SystemExit(2)


if __name__ == "__main__":
    main()
