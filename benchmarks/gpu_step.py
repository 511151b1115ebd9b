"""One `gae` step (policy + critic + reference + reward model) of a Qwen2.5-0.5B-shaped model in bf16 on one GPU,
under plain single-process (DDP's path) and DeepSpeed ZeRO-3: s/step, tokens/s and peak GPU memory.

    python benchmarks/gpu_step.py                    # on a GPU machine: both engines, 3 measured steps each
    python benchmarks/gpu_step.py --tiny             # a CPU smoke run of the whole script (tiny shapes, fp32)

Nothing is downloaded: the model is built from Qwen2.5-0.5B's published shape (24 layers, hidden 896, 14 heads /
2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings) with random weights, and the tokenizer is a word-level
one with one token per vocabulary id, so every sampled id decodes. Per step: 16 prompts x 4 completions x 128 new
tokens (random weights rarely emit EOS, so completions run the full length), one PPO epoch, minibatch 32,
microbatch 16, bf16 autocast, gradient checkpointing off.
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
QWEN_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def word_tokenizer(vocab_size: int):
    """One token `t<i>` per id (EOS = t0, PAD = t1): every id a model samples decodes to text."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="t0", pad_token="t1", unk_token="t2", padding_side="left"
    )


def worker(out: Path, tiny: bool, steps: int) -> None:
    import datasets
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from rlhf import PPOConfig, PPOTrainer
    from rlhf.engines import engine_name

    shape = TINY if tiny else QWEN_05B
    tokenizer = word_tokenizer(shape["vocab_size"])
    config = Qwen2Config(**shape, eos_token_id=0, pad_token_id=1, bos_token_id=0)
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(config)
    rm_config = Qwen2Config(**shape, eos_token_id=0, pad_token_id=1, bos_token_id=0, num_labels=1)
    reward_model = Qwen2ForSequenceClassification(rm_config)
    prompts = [" ".join(f"t{3 + (i * 31 + j * 17) % 5000}" for j in range(32)) for i in range(64)]
    args = PPOConfig(
        output_dir=str(out / "run"),
        max_steps=steps,
        rollout_batch_size=4 if tiny else 16,
        num_generations=4,
        mini_batch_size=8 if tiny else 32,
        micro_batch_size=4 if tiny else 16,
        num_ppo_epochs=1,
        max_new_tokens=8 if tiny else 128,
        advantage_estimator="gae",
        critic_init="reward_model",
        bf16=not tiny,
        disable_tqdm=True,
        save_steps=10**9,  # no checkpoint inside the timed steps (one is written at the end)
    )
    trainer = PPOTrainer(
        policy,
        reward_model,
        args,
        datasets.Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
    )
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    history = trainer.train()
    result = {
        "engine": engine_name(trainer.accelerator),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "history": history,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "params": sum(p.numel() for p in policy.parameters()),
    }
    (out / "result.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3, help="measured steps per engine (one warm-up more)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, fp32: a CPU smoke run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker), args.tiny, args.steps)
        return
    configs = {
        "single": [],
        "zero3": ["--config_file", str(REPO / "recipes/accelerate/deepspeed_zero3.yaml")],
    }
    print(f"{'engine':<8}{'s/step':>8}{'generate':>10}{'update':>8}{'tok/s':>9}{'peak GB':>9}  device")
    with tempfile.TemporaryDirectory(prefix="gpu_step_") as tmp:
        for name, extra in configs.items():
            out = Path(tmp) / name
            out.mkdir()
            cmd = [sys.executable, "-m", "accelerate.commands.launch", *extra, "--num_processes", "1"]
            cmd += ["--num_machines", "1", "--dynamo_backend", "no", __file__, "--worker", str(out)]
            cmd += ["--steps", str(args.steps + 1)] + (["--tiny"] if args.tiny else [])
            env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr[-3000:]}")
                continue
            r = json.loads((out / "result.json").read_text())
            rows = r["history"][1:]
            med = {
                k: statistics.median(x[k] for x in rows)
                for k in ("time/step", "time/generate", "time/update")
            }
            tokens = statistics.median(x["generated_tokens"] for x in rows)
            peak = f"{r['peak_gpu_gb']:.1f}" if r["peak_gpu_gb"] is not None else "-"
            print(
                f"{r['engine']:<8}{med['time/step']:>8.2f}{med['time/generate']:>10.2f}{med['time/update']:>8.2f}"
                f"{tokens / med['time/step']:>9.0f}{peak:>9}  {r['device']} ({r['params'] / 1e6:.0f}M params)"
            )


if __name__ == "__main__":
    main()
