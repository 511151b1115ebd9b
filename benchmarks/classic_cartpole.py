"""Steps and wall-clock to solve CartPole-v1: our PPO / A2C (/ DQN when classic.dqn exists) vs Stable-Baselines3
with RL-Zoo hyperparameters, in the same process, one torch thread, the same seeds.

    pip install -e ".[bench]"
    python benchmarks/classic_cartpole.py --seeds 1 2 3 4 5

Solved = the mean return of the last 20 *training* episodes reaches 475, checked after every vector step for
SB3 (a callback) and recovered from metrics.jsonl for ours (the same rule, `classic.actor_critic.first_solved_step`).
Prints, per algorithm, the median over seeds of steps and seconds to solve and the ratio ours / SB3.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

import torch

THRESHOLD, WINDOW = 475.0, 20

# RL-Zoo (rl-baselines3-zoo/hyperparams/*.yml), CartPole-v1
ZOO = {
    "ppo": dict(
        n_envs=8, total=100_000, kwargs=dict(n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                                             ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    ),
    "a2c": dict(n_envs=8, total=500_000, kwargs=dict(ent_coef=0.0)),
    "dqn": dict(
        n_envs=1, total=50_000,
        kwargs=dict(learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000, gamma=0.99,
                    target_update_interval=10, train_freq=256, gradient_steps=128, exploration_fraction=0.16,
                    exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256])),
    ),
}  # fmt: skip


def run_sb3(algo: str, seed: int) -> tuple[int | None, float]:
    import stable_baselines3 as sb3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class StopOnSolved(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.returns: deque[float] = deque(maxlen=WINDOW)
            self.solved_step: int | None = None

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.returns.append(info["episode"]["r"])
                    if sum(self.returns) / len(self.returns) >= THRESHOLD:
                        self.solved_step = self.num_timesteps
                        return False
            return True

    spec = ZOO[algo]
    kwargs = dict(spec["kwargs"])
    for key in ("learning_rate", "clip_range"):
        if isinstance(kwargs.get(key), str):  # "lin_x": linear decay from x to 0, as RL-Zoo does
            start = float(kwargs[key].split("_")[1])
            kwargs[key] = lambda progress, start=start: progress * start
    env = make_vec_env("CartPole-v1", n_envs=spec["n_envs"], seed=seed)
    model = getattr(sb3, algo.upper())("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    callback = StopOnSolved()
    start = time.perf_counter()
    model.learn(spec["total"], callback=callback)
    return callback.solved_step, time.perf_counter() - start


def run_ours(algo: str, seed: int) -> tuple[int | None, float]:
    from classic.actor_critic import first_solved_step
    from classic.cli import config_from_dict

    module = __import__(f"classic.{algo}", fromlist=["train"])
    config_cls = next(v for k, v in vars(module).items() if k.lower() == f"{algo}config")
    fields = config_cls.__dataclass_fields__
    with tempfile.TemporaryDirectory() as tmp:
        values = {
            "env_id": "CartPole-v1",
            "seed": seed,
            "run_dir": tmp,
            # DQN's epsilon schedule is a fraction of the budget: ours keeps its default 100k budget (epsilon
            # reaches its floor after 5k steps) rather than RL-Zoo's 50k; every run stops once solved anyway
            "total_timesteps": 100_000 if algo == "dqn" else ZOO[algo]["total"],
        }
        if "stop_at_return" in fields:
            values["stop_at_return"] = THRESHOLD
        if "torch_threads" in fields:
            values["torch_threads"] = 1
        cfg = config_from_dict(config_cls, {k: v for k, v in values.items() if k in fields})
        start = time.perf_counter()
        result = module.train(cfg)
        seconds = time.perf_counter() - start
        steps = getattr(result, "solved_step", None)
        if steps is None and (Path(tmp) / "metrics.jsonl").is_file():
            steps = first_solved_step(Path(tmp), THRESHOLD)
        return steps, seconds


def available(algo: str) -> bool:
    try:
        __import__(f"classic.{algo}")
    except ImportError:
        return False
    return True


def median_or_none(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c", "dqn"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["RLBOOK_NO_PROGRESS"] = "1"
    rows = []
    for algo in args.algos:
        if not available(algo):
            print(f"classic.{algo} not importable: skipped")
            continue
        for impl, fn in (("ours", run_ours), ("sb3", run_sb3)):
            for seed in args.seeds:
                steps, seconds = fn(algo, seed)
                rows.append((algo, impl, seed, steps, seconds))
                print(f"{algo:4s} {impl:5s} seed {seed}: solved at {steps} steps, {seconds:.1f}s", flush=True)
    print(
        "\n| algo | ours steps (median) | SB3 steps (median) | steps ratio | ours s | SB3 s | wall-clock ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for algo in dict.fromkeys(r[0] for r in rows):

        def med(impl: str, col: int, algo: str = algo) -> float | None:
            # unsolved runs count with their full time / no steps: report how many solved
            return median_or_none(
                [r[col] for r in rows if r[0] == algo and r[1] == impl and r[3] is not None]
            )

        solved = {
            i: sum(r[3] is not None for r in rows if r[0] == algo and r[1] == i) for i in ("ours", "sb3")
        }
        s_o, s_s, t_o, t_s = med("ours", 3), med("sb3", 3), med("ours", 4), med("sb3", 4)
        ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
        n = len(args.seeds)
        print(
            f"| {algo} | {s_o} ({solved['ours']}/{n} solved) | {s_s} ({solved['sb3']}/{n} solved) | "
            f"{ratio(s_o, s_s)} | {t_o and round(t_o, 1)} | {t_s and round(t_s, 1)} | {ratio(t_o, t_s)} |"
        )


if __name__ == "__main__":
    main()
