"""Random search over PPO / A2C hyperparameters on CartPole-v1: how classic/configs/*_cartpole.yaml were found.

    python benchmarks/sweep_cartpole.py --algo ppo --trials 60 --seeds 1 2 3 4 5 --workers 2
    python benchmarks/sweep_cartpole.py --algo ppo --config classic/configs/ppo_cartpole.yaml --seeds $(seq 1 30)

Each trial trains every seed with one torch thread until solved (mean of the last 20 training episodes >= 475)
and prints one JSON line: the settings, per-seed steps and seconds to solve (None / 99 when not solved within
the budget), and their medians. The seconds are the training clock of metrics.jsonl at the solving episode.
With `--workers 2` two runs share the machine, so seconds are comparable within a sweep, not with the
single-process numbers of benchmarks/classic_cartpole.py. Ranked by median seconds among all-seeds-solved.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from multiprocessing import Pool
from pathlib import Path

THRESHOLD = 475.0

SPACES = {
    "ppo": {
        "num_envs": [4, 8, 16],
        "num_steps": [16, 32, 64, 128],
        "minibatches": [1, 2, 4],  # mini_batch_size = num_envs * num_steps / minibatches
        "num_ppo_epochs": [4, 6, 10, 20],
        "learning_rate": [3e-4, 1e-3, 2.5e-3, 5e-3],
        "gamma": [0.98, 0.99],
        "gae_lambda": [0.8, 0.95],
        "total_timesteps": [50_000, 100_000],  # the LR / clip annealing horizon
    },
    "a2c": {
        "num_envs": [8, 16],
        "num_steps": [5, 8, 16, 32],
        "learning_rate": [7e-4, 1e-3, 2e-3, 3e-3],
        "gamma": [0.98, 0.99],
        "gae_lambda": [1.0, 0.95, 0.9],
        "optimizer": ["rmsprop", "adam"],
        "whiten_advantages": [False, True],
        "total_timesteps": [100_000],
    },
}


def sample(algo: str, rng: random.Random) -> dict:
    values = {name: rng.choice(choices) for name, choices in SPACES[algo].items()}
    if algo == "ppo":
        batch = values["num_envs"] * values["num_steps"]
        values["mini_batch_size"] = batch // values.pop("minibatches")
    return values


def solve(job: tuple[str, dict, int]) -> tuple[int | None, float]:
    """(steps, seconds) to solve for one seed; (None, 99.0) when the budget ran out first."""
    algo, values, seed = job
    os.environ["RLBOOK_NO_PROGRESS"] = "1"
    from classic.actor_critic import first_solved_row
    from classic.cli import config_from_dict

    module = __import__(f"classic.{algo}", fromlist=["train"])
    config_cls = getattr(module, f"{algo.upper()}Config")
    with tempfile.TemporaryDirectory() as tmp:
        run = {"seed": seed, "output_dir": tmp, "stop_at_return": THRESHOLD, "num_threads": 1}
        module.train(config_from_dict(config_cls, {**values, **run}))
        row = first_solved_row(Path(tmp), THRESHOLD)
    return (int(row["global_step"]), float(row["time"])) if row else (None, 99.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algo", choices=sorted(SPACES), default="ppo")
    parser.add_argument("--trials", type=int, default=40, help="random settings to try")
    parser.add_argument("--config", help="evaluate this YAML file instead of sampling")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--search-seed", type=int, default=0)
    args = parser.parse_args()
    if args.config:
        from classic.cli import load_yaml

        trials = [{k: v for k, v in load_yaml(args.config).items() if k != "output_dir"}]
    else:
        rng = random.Random(args.search_seed)
        trials = [sample(args.algo, rng) for _ in range(args.trials)]
    results = []
    with Pool(args.workers) as pool:
        for values in trials:
            runs = pool.map(solve, [(args.algo, values, seed) for seed in args.seeds])
            steps, seconds = [s for s, _ in runs], [t for _, t in runs]
            row = {
                "settings": values,
                "solved": sum(s is not None for s in steps),
                "median_steps": statistics.median(s if s is not None else 10**9 for s in steps),
                "median_seconds": round(statistics.median(seconds), 2),
                "steps": steps,
                "seconds": seconds,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\nall seeds solved, fastest first:")
    for row in sorted(
        (r for r in results if r["solved"] == len(args.seeds)), key=lambda r: r["median_seconds"]
    ):
        print(f"{row['median_seconds']:6.2f}s {row['median_steps']:>9,} steps  {row['settings']}")


if __name__ == "__main__":
    main()
