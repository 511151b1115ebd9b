"""The same 2-process RLHF workload under DDP, FSDP2, ZeRO-2 and ZeRO-3, on CPU (gloo): s/step, its split and
peak RSS per process, with ratios against DDP measured in the same run.

    python benchmarks/engines.py                      # gae, 10M GPT-2, 2 processes x 1 thread, 4 measured steps
    python benchmarks/engines.py --estimator grpo --engines ddp,fsdp2,zero3 --steps 3
    python benchmarks/engines.py --quick              # tiny model: a smoke run of the whole script
    python benchmarks/engines.py --medium --engines ddp,fsdp2,zero3 --steps 2   # ~37M networks: the memory row

Each engine is launched as users launch it (`accelerate launch --config_file recipes/accelerate/<engine>.yaml
--num_processes 2`), one after the other, on the same workload: a GPT-2 policy (6 layers x 320, 8k vocabulary,
~10M parameters; the critic and reward model the same shape), per process 8 prompts x 2 completions x 32 new
tokens, one PPO epoch, 2 optimizer steps of 2 microbatches per rollout. The first step is dropped; medians over
the rest; peak RSS per process over the whole run (model building, the steps; no checkpoint). On CPU sharding
buys memory, not speed: every sharded forward gathers weights over gloo.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "ddp": ["--multi_gpu"],
    "fsdp2": ["--config_file", str(REPO / "recipes/accelerate/fsdp2.yaml")],
    "zero2": ["--config_file", str(REPO / "recipes/accelerate/deepspeed_zero2.yaml")],
    "zero3": ["--config_file", str(REPO / "recipes/accelerate/deepspeed_zero3.yaml")],
}
FULL = dict(vocab=8192, n_layer=6, n_embd=320, n_head=5, prompts=8, group=2, new_tokens=32)
# ~37M parameters per network: the training states (weights, gradients, Adam) outweigh the fixed per-process
# overheads, so what sharding saves shows in the RSS
MEDIUM = dict(vocab=8192, n_layer=8, n_embd=576, n_head=8, prompts=8, group=2, new_tokens=32)
QUICK = dict(vocab=400, n_layer=2, n_embd=64, n_head=4, prompts=2, group=2, new_tokens=6)


def worker(out: Path, estimator: str, steps: int, size: dict) -> None:
    """Runs inside each launched process."""
    import datasets
    import torch

    from rlhf import PPOConfig, PPOTrainer
    from rlhf.engines import end_distributed, engine_name
    from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer

    torch.set_num_threads(1)
    words = [f"w{i}" for i in range(2000)]
    texts = [" ".join(words[(i * 7 + j * 13) % 2000] for j in range(12)) for i in range(2000)]
    tokenizer = build_tokenizer(texts, vocab_size=size["vocab"])
    shape = dict(n_layer=size["n_layer"], n_embd=size["n_embd"], n_head=size["n_head"])
    batch = size["prompts"] * size["group"]
    args = PPOConfig(
        output_dir=str(out / "run"),
        max_steps=steps,
        rollout_batch_size=size["prompts"],
        num_generations=size["group"],
        mini_batch_size=batch // 2,
        micro_batch_size=batch // 4,
        num_ppo_epochs=1,
        max_new_tokens=size["new_tokens"],
        learning_rate=1e-6,
        critic_learning_rate=1e-6,
        advantage_estimator=estimator,
        kl_in_loss=estimator == "grpo",
        kl_estimator="k3" if estimator == "grpo" else "k1",
        disable_tqdm=True,
    )
    prompts = [" ".join(t.split()[:6]) for t in texts[:64]]
    trainer = PPOTrainer(
        build_causal_lm(tokenizer, seed=0, **shape),
        build_reward_model(tokenizer, seed=1, **shape),
        args,
        datasets.Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
    )
    # the body of PPOTrainer.train's loop (no metrics file, no checkpoint: its gathering is not a step's cost)
    history = []
    import time

    for _ in range(steps):
        t0 = time.perf_counter()
        rollout = trainer.rollout(trainer.batch_indices(trainer.step))
        t1 = time.perf_counter()
        trainer.update(rollout.experience)
        trainer.step += 1
        history.append(
            {**rollout.stats, "time/update": time.perf_counter() - t1, "time/step": time.perf_counter() - t0}
        )
    acc = trainer.accelerator
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # MB (KiB on Linux)
    # the peak is set while models are built and prepared (every rank holds them whole until they are sharded);
    # what the steps keep resident is the RSS after them, once freed memory is handed back to the OS
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    steady = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    per_rank = acc.gather(torch.tensor([[peak, steady]])).tolist()
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(
            json.dumps({"engine": engine_name(acc), "history": history, "rss_mb": per_rank})
        )
    del trainer
    end_distributed(acc)


def launch(engine: str, out: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *CONFIGS[engine], "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", __file__, "--worker"]
    cmd += [str(out), "--estimator", args.estimator, "--steps", str(args.steps + 1)]
    cmd += ["--quick"] if args.quick else ["--medium"] if args.medium else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--estimator", default="gae", help="advantage estimator (default gae: policy + critic)"
    )
    parser.add_argument("--engines", default="ddp,fsdp2,zero2,zero3", help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=None, help="measured steps (default 4, quick 1)")
    parser.add_argument("--quick", action="store_true", help="tiny model: a smoke run")
    parser.add_argument("--medium", action="store_true", help="~37M-parameter networks instead of ~10M")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 1 if args.quick else 4
    size = QUICK if args.quick else MEDIUM if args.medium else FULL
    if args.worker:
        worker(Path(args.worker), args.estimator, args.steps, size)
        return
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(CONFIGS))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; choose from {','.join(CONFIGS)}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="engines_") as tmp:
        for engine in engines:
            result = launch(engine, Path(tmp) / engine, args)
            measured = result["history"][1:]  # the first step pays one-off costs
            rows[engine] = {
                k: statistics.median(r[k] for r in measured)
                for k in ("time/step", "time/generate", "time/score", "time/annotate", "time/update")
            }
            rows[engine]["rss"] = max(r[0] for r in result["rss_mb"])
            rows[engine]["steady"] = max(r[1] for r in result["rss_mb"])
    batch = size["prompts"] * size["group"]
    params = "~37M" if args.medium else "~10M" if not args.quick else "tiny"
    print(
        f"{args.estimator}, {params}-parameter networks; 2 processes x 1 thread (CPU, gloo); per process {batch} completions x {size['new_tokens']}"
        f" new tokens; medians of {args.steps} steps after one warm-up; load average {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'engine':<8}{'s/step':>8}{'generate':>10}{'score':>8}{'annotate':>10}{'update':>8}{'peak MB':>9}"
    )
    header += f"{'after steps MB':>16}"
    print(header + "\n" + "-" * len(header))
    for engine, r in rows.items():
        print(
            f"{engine:<8}{r['time/step']:>8.2f}{r['time/generate']:>10.2f}{r['time/score']:>8.2f}"
            f"{r['time/annotate']:>10.2f}{r['time/update']:>8.2f}{r['rss']:>9.0f}{r['steady']:>16.0f}"
        )
    if "ddp" in rows and len(rows) > 1:
        print(
            "\nratios engine / ddp (same run)   s/step  peak RSS  RSS after steps (per process, worst rank)"
        )
        base = rows["ddp"]
        for engine, r in rows.items():
            if engine != "ddp":
                print(
                    f"{engine:<30}{r['time/step'] / base['time/step']:>8.2f}{r['rss'] / base['rss']:>10.2f}"
                    f"{r['steady'] / base['steady']:>17.2f}"
                )


if __name__ == "__main__":
    main()
