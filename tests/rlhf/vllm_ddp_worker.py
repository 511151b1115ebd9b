"""Run by test_vllm.py under `accelerate launch --num_processes 2` (CPU, gloo; DDP or FSDP2): a grpo run with one
vLLM engine per rank (distributed_executor_backend="external_launcher"), 2 steps and an evaluation; each rank writes its
engine's probe gap, its pushes, the logged gaps and a digest of its policy."""

import hashlib
import json
import sys
from pathlib import Path

import datasets
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhf import PPOConfig, PPOTrainer
from rlhf.engines import end_distributed
from rlhf.tiny import build_tokenizer
from rlhf.vllm_engine import policy_logprobs

out = Path(sys.argv[1])
torch.set_num_threads(1)
tok = build_tokenizer(
    ["the cat sat on the mat", "a dog ran in the park", "good good very good"] * 20, vocab_size=300
)
config = LlamaConfig(
    vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
)  # fmt: skip
torch.manual_seed(0)
args = PPOConfig(
    output_dir=str(out / "run"), max_steps=2, rollout_batch_size=2, num_generations=4, mini_batch_size=8,
    micro_batch_size=4, max_new_tokens=6, max_prompt_length=32, learning_rate=5e-3, advantage_estimator="grpo",
    kl_coef=0.0, disable_tqdm=True, plot_metrics=False, use_vllm=True, vllm_kv_cache_gib=0.05, eval_steps=2,
)  # fmt: skip
data = datasets.Dataset.from_dict({"prompt": ["the movie", "a dog", "the cat", "it was"] * 4})


def chars(prompts, completions, **columns):
    return [len(c) / 10 for c in completions]


trainer = PPOTrainer(LlamaForCausalLM(config), chars, args, data, data.select(range(3)), processing_class=tok)
history = trainer.train()
acc = trainer.accelerator
policy = acc.unwrap_model(trainer.policy)
ids = tok("the cat sat on the mat and a dog").input_ids
gap = (trainer.generator.probe_logprobs(ids) - policy_logprobs(policy, ids)).abs().max()
state = {
    k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in policy.state_dict().items()
}  # FSDP2
digest = hashlib.sha256(b"".join(v.detach().numpy().tobytes() for _, v in sorted(state.items())))
result = {
    "probe_gap": float(gap),
    "pushes": trainer.generator.state.pushes,
    "diff_max": [r["vllm/logprob_diff_max"] for r in history],
    "eval": [r.get("eval/reward") for r in history],
    "policy": digest.hexdigest(),
}
(out / f"rank{acc.process_index}.json").write_text(json.dumps(result))
trainer.generator.close()  # vLLM's shutdown leaves the launcher's process group to end_distributed
del trainer
end_distributed(acc)
