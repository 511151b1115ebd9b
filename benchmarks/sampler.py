"""Our sampler (`rlhf.rollout.sample`) against bare `model.generate(do_sample=True)`, same model, same batch, the
same process, alternating which goes first.

    python benchmarks/sampler.py                       # GPT-2 6 x 320, 8k vocab, 64 rows x 64 new tokens, 2 threads
    python benchmarks/sampler.py --threads 1 --reps 7
    python benchmarks/sampler.py --quick               # tiny sizes: a smoke run (tests/rlhf/test_benchmark_smoke.py)
    python benchmarks/sampler.py --model DIR           # a real model (SmolLM2-135M-Instruct: python -m rlhf.gguf), 4 prompts x 8

Both decode with a KV cache at temperature 1 with no top-k / top-p, from left-padded prompts of different
lengths, and run until every row has ended. The weights are random, so EOS (1 token in 8k) is almost never drawn
and both produce the full `--new-tokens` (the mean length is printed to show it). `sample` also returns every
token's log-prob; `generate` returns only the tokens. Useful FLOPs: 2 * matmul params * tokens, prompt included.
With `--model`, the prompts are chat turns rendered with the model's template (32 rows, 16 new tokens by default)
and the stop token is one the model never samples, so both run the full length and do the same work.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf.models import fuse_activations
from rlhf.rollout import response_mask_from_ids, sample

FULL = dict(vocab=8192, n_layer=6, n_embd=320, n_head=5, batch=64, new_tokens=64, prompt_len=(6, 16))
QUICK = dict(vocab=300, n_layer=2, n_embd=64, n_head=4, batch=8, new_tokens=8, prompt_len=(3, 6))
PAD, EOS = 0, 1


def build(size: dict, fused: bool) -> tuple[GPT2LMHeadModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=size["vocab"],
        n_layer=size["n_layer"],
        n_embd=size["n_embd"],
        n_head=size["n_head"],
        n_positions=256,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    model = GPT2LMHeadModel(config).eval()
    if fused:
        fuse_activations(model)
    lo, hi = size["prompt_len"]
    lengths = torch.randint(lo, hi + 1, (size["batch"],))
    query_ids = torch.full((size["batch"], hi), PAD)
    query_mask = torch.zeros_like(query_ids)
    for row, n in enumerate(lengths.tolist()):  # left padding
        query_ids[row, hi - n :] = torch.randint(2, size["vocab"], (n,))
        query_mask[row, hi - n :] = 1
    return model, query_ids, query_mask


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that do matmuls per token: everything but lookup tables (positions; the input embedding unless
    it is tied to the LM head, which does a matmul)."""
    total = sum(p.numel() for p in model.parameters())
    if isinstance(model, GPT2LMHeadModel):
        return total - model.transformer.wpe.weight.numel()
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total if embed is head else total - embed.numel()


QUESTIONS = [
    f"What is {a} plus {b}? Answer with the number only." for a in range(3, 40, 7) for b in (4, 9, 13)
]


def build_real(
    directory: str, batch: int, group: int, stop_at_eos: bool = False
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, int, int]:
    """A saved causal LM and `batch` left-padded chat prompts, each distinct prompt `group` times in a row (a
    GRPO rollout); returns model, ids, mask, pad id, stop id (the model's EOS with `stop_at_eos`, else a token
    it never samples, so that every row runs the full length)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTIONS[(i // group) % len(QUESTIONS)]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(batch)
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    stop = tokenizer.eos_token_id if stop_at_eos else model.config.vocab_size - 1  # the last: never sampled
    return model, enc.input_ids, enc.attention_mask, tokenizer.pad_token_id, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed runs of each (after one warm-up each)")
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: a smoke run")
    parser.add_argument("--model", default=None, help="a saved causal LM folder instead of the random GPT-2")
    parser.add_argument("--batch", type=int, default=32, help="--model: rows per batch")
    parser.add_argument("--new-tokens", type=int, default=16, help="--model: new tokens per row")
    parser.add_argument("--group", type=int, default=8, help="--model: rows per distinct prompt (GRPO group)")
    parser.add_argument(
        "--eos",
        action="store_true",
        help="--model: stop rows at the model's EOS (they end at different steps) instead of the full length",
    )
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="keep GPT-2's composed gelu_new (the trainer fuses it by default)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = QUICK if args.quick else FULL
    pad, eos = PAD, EOS
    if args.model:
        model, query_ids, query_mask, pad, eos = build_real(args.model, args.batch, args.group, args.eos)
        size = dict(size, batch=args.batch, new_tokens=args.new_tokens)
    else:
        model, query_ids, query_mask = build(size, fused=not args.no_fuse)
    new = size["new_tokens"]

    def run_sample() -> torch.Tensor:
        return sample(model, query_ids, query_mask, new, 1.0, eos, pad)[0]

    def run_generate() -> torch.Tensor:
        out = model.generate(
            input_ids=query_ids,
            attention_mask=query_mask,
            do_sample=True,
            max_new_tokens=new,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        return out[:, query_ids.shape[1] :]

    def run_sample_unshared() -> torch.Tensor:
        return sample(model, query_ids, query_mask, new, 1.0, eos, pad, share_prompts=False)[0]

    def run_sample_kept() -> torch.Tensor:
        return sample(model, query_ids, query_mask, new, 1.0, eos, pad, drop_finished=False)[0]

    runs = {
        "sample": run_sample,
        "kept": run_sample_kept,
        "unshared": run_sample_unshared,
        "generate": run_generate,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    lengths: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for rep in range(args.reps):
            order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
            for name in order:
                torch.manual_seed(rep)
                t0 = time.perf_counter()
                response_ids = runs[name]()
                times[name].append(time.perf_counter() - t0)
                lengths[name].append(response_mask_from_ids(response_ids, eos).sum(1).float().mean().item())

    params = matmul_params(model)
    prompt_tokens = query_mask.sum().item()
    name = (
        f"{args.model} ({model.config.model_type})"
        if args.model
        else f"GPT-2 {size['n_layer']} x {size['n_embd']}, vocab {size['vocab']}"
    )
    print(
        f"{name} ({params / 1e6:.1f}M matmul params), prompts {query_ids.shape[1]} tokens (padded), "
        f"{size['batch']} rows x {new} new tokens, {args.threads} threads, "
        f"{'' if args.model else ('gelu_new, ' if args.no_fuse else 'fused GELU, ')}median of {args.reps}"
    )
    print(f"{'':10}{'s/batch':>10}{'tok/s':>10}{'GFLOP/s':>10}{'mean len':>10}")
    medians = {}
    for name in runs:
        seconds = statistics.median(times[name])
        length = statistics.mean(lengths[name])
        medians[name] = seconds
        tokens = size["batch"] * length
        gflops = 2 * params * (prompt_tokens + tokens) / seconds / 1e9
        print(f"{name:10}{seconds:>10.3f}{tokens / seconds:>10.0f}{gflops:>10.1f}{length:>10.1f}")
    distinct = len(torch.unique(torch.cat([query_ids, query_mask], 1), dim=0))
    print(f"ratio sample / generate: {medians['sample'] / medians['generate']:.2f}")
    print(
        f"ratio kept / generate: {medians['kept'] / medians['generate']:.2f} (sample with finished rows decoded "
        "to the end, as generate does)"
    )
    print(
        f"ratio unshared / generate: {medians['unshared'] / medians['generate']:.2f} (sample without prompt "
        f"sharing; {distinct} distinct prompts in {size['batch']} rows)"
    )


if __name__ == "__main__":
    main()
