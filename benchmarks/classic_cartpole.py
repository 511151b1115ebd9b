"""Steps and wall-clock to solve CartPole-v1: our PPO / A2C / DQN vs Stable-Baselines3 with RL-Zoo
hyperparameters, in the same process, one torch thread, the same seeds.

    pip install -e ".[bench]"
    python benchmarks/classic_cartpole.py --seeds 1 2 3 4 5                 # ours: our shipped CartPole configs
    python benchmarks/classic_cartpole.py --seeds 1 2 3 4 5 --ours-hparams zoo   # ours: RL-Zoo's settings too

Solved = the mean return of the last 20 *training* episodes reaches 475, checked after every vector step for
SB3 (a callback) and read back from metrics.jsonl for ours (the same rule; each row there carries the seconds
since training started). Both clocks start when training starts (after the model is built) and stop at the
solving step: SB3's `learn` stops there via the callback, ours stops at the next rollout boundary, and the
row's time excludes writing the learning curve and model afterwards. A short warm-up run of each
implementation first pays the one-off imports (torch._dynamo via Adam, matplotlib) outside the clock.
Prints, per algorithm, the median over seeds of steps and seconds to solve and the ratio ours / SB3.
"""

from __future__ import annotations

import argparse
import math
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


def run_sb3(algo: str, seed: int, total: int | None = None) -> tuple[int | None, float]:
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
    model.learn(total or spec["total"], callback=callback)
    return callback.solved_step, time.perf_counter() - start


CONFIGS = Path(__file__).resolve().parents[1] / "classic" / "configs"
# ours, tuned: the CartPole configs we ship (None: the algorithm's defaults)
OURS_TUNED = {"ppo": "ppo_cartpole.yaml", "a2c": "a2c_cartpole.yaml", "dqn": None}


def run_ours(
    algo: str, seed: int, hparams: str = "tuned", total: int | None = None
) -> tuple[int | None, float]:
    """`hparams` "tuned": our shipped CartPole config; "zoo": our defaults, which are RL-Zoo's for PPO and SB3's
    for A2C (DQN has no separate zoo setting here)."""
    from classic.actor_critic import first_solved_row
    from classic.cli import parse_config

    module = __import__(f"classic.{algo}", fromlist=["train"])
    config_cls = next(v for k, v in vars(module).items() if k.lower() == f"{algo}config")
    with tempfile.TemporaryDirectory() as tmp:
        argv = []
        if hparams == "tuned" and OURS_TUNED[algo]:
            argv += ["--config", str(CONFIGS / OURS_TUNED[algo])]
        if total is None:
            # DQN's epsilon schedule is a fraction of the budget: ours keeps its default 100k budget (epsilon
            # reaches its floor after 5k steps) rather than RL-Zoo's 50k; every run stops once solved anyway
            total = 100_000 if algo == "dqn" or hparams == "tuned" else ZOO[algo]["total"]
        argv += ["--env_id", "CartPole-v1", "--seed", str(seed), "--output_dir", tmp]
        argv += ["--total_timesteps", str(total)]
        argv += ["--stop_at_return", str(THRESHOLD), "--num_threads", "1"]
        cfg = parse_config(config_cls, argv)
        start = time.perf_counter()
        module.train(cfg)
        seconds = time.perf_counter() - start
        row = first_solved_row(Path(tmp), THRESHOLD, WINDOW)
        return (int(row["global_step"]), float(row["time"])) if row else (None, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c", "dqn"])
    parser.add_argument(
        "--ours-hparams", choices=["tuned", "zoo"], default="tuned",
        help="ours with our shipped CartPole configs (tuned) or with RL-Zoo's / SB3's settings (zoo)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ["RLBOOK_NO_PROGRESS"] = "1"
    # warm-up outside the clock: one-off imports and first-call costs of both implementations
    run_ours("ppo", 0, total=512)
    run_sb3("ppo", 0, total=512)
    rows = []
    for algo in args.algos:
        for impl in ("ours", "sb3"):
            for seed in args.seeds:
                if impl == "ours":
                    steps, seconds = run_ours(algo, seed, args.ours_hparams)
                else:
                    steps, seconds = run_sb3(algo, seed)
                rows.append((algo, impl, seed, steps, seconds))
                print(f"{algo:4s} {impl:5s} seed {seed}: solved at {steps} steps, {seconds:.1f}s", flush=True)
    print(
        "\n| algo | ours steps (median) | SB3 steps (median) | steps ratio | ours s | SB3 s | wall-clock ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    n = len(args.seeds)
    for algo in dict.fromkeys(r[0] for r in rows):
        cells = {}
        for impl in ("ours", "sb3"):
            runs = [r for r in rows if r[0] == algo and r[1] == impl]
            solved = sum(r[3] is not None for r in runs)
            # an unsolved run counts as infinitely many steps; its seconds (the whole budget) are a lower bound
            steps = statistics.median([r[3] if r[3] is not None else math.inf for r in runs])
            seconds = statistics.median([r[4] if r[3] is not None else math.inf for r in runs])
            budget_s = min((r[4] for r in runs if r[3] is None), default=math.inf)
            cells[impl] = (steps, seconds, budget_s, f"{solved}/{n} solved")

        def show(value: float, lower_bound: float, fmt: str) -> str:
            if math.isfinite(value):
                return format(value, fmt)
            return "not solved" if not math.isfinite(lower_bound) else f"> {lower_bound:{fmt}} (budget)"

        def ratio(a: float, b: float, b_lower: float) -> str:
            if math.isfinite(a) and math.isfinite(b):
                return f"{a / b:.2f}"
            return f"< {a / b_lower:.2f}" if math.isfinite(a) and math.isfinite(b_lower) else "-"

        (s_o, t_o, _, n_o), (s_s, t_s, b_s, n_s) = cells["ours"], cells["sb3"]
        print(
            f"| {algo} | {show(s_o, math.inf, ',.0f')} ({n_o}) | {show(s_s, math.inf, ',.0f')} ({n_s}) | "
            f"{ratio(s_o, s_s, math.inf)} | {show(t_o, math.inf, '.1f')} | {show(t_s, b_s, '.1f')} | "
            f"{ratio(t_o, t_s, b_s)} |"
        )
    # speed per environment step, separate from how many steps each needs (solved runs only)
    print("\nenv steps per second while solving (median over solved seeds):")
    for algo in dict.fromkeys(r[0] for r in rows):
        speeds = {}
        for impl in ("ours", "sb3"):
            rates = [r[3] / r[4] for r in rows if r[0] == algo and r[1] == impl and r[3] is not None]
            speeds[impl] = f"{statistics.median(rates):,.0f}" if rates else "-"
        print(f"  {algo}: ours {speeds['ours']}, SB3 {speeds['sb3']}")


if __name__ == "__main__":
    main()
