"""Run by test_ddp.py under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo).

1. The split case (tests/rlhf/split_case.py): each rank updates on its half of the same global batch; the
   weight changes are written for the test to compare with one process on the whole batch.
2. 2-step training runs of the estimators named on the command line (adaptive KL, a checkpoint per step).
3. `evaluate` of the last run, its prompts split unevenly over the ranks, against greedy decoding on one rank.
4. gigpo's step-level advantages with each rank holding one episode (step groups over both ranks).
"""

import json
import sys
from pathlib import Path

import datasets
import torch
from safetensors.torch import save_file

from rlhf import PPOConfig, PPOTrainer
from rlhf.engines import end_distributed
from rlhf.tiny import build_causal_lm, build_reward_model, build_tokenizer
from tests.rlhf import split_case as case
from tests.rlhf.test_update import CASES, EPISODE_CASES

out = Path(sys.argv[1])
torch.set_num_threads(1)

for estimator, loss_type, episodes in [*((*c, False) for c in CASES), *((*c, True) for c in EPISODE_CASES)]:
    trainer = case.trainer(out / "split", estimator, loss_type, micro=2, world=2)
    acc = trainer.accelerator
    critic = acc.unwrap_model(trainer.critic) if trainer.critic is not None else None
    exp = case.experience(acc.unwrap_model(trainer.policy), critic)
    exp = case.as_episodes(exp) if episodes else exp  # multi-turn: observation tokens out of every loss
    half = case.BATCH // 2
    before = case.weights(trainer)
    trainer.update(exp.select(slice(acc.process_index * half, (acc.process_index + 1) * half)))
    after = case.weights(trainer)
    deltas = {k: (after[k] - before[k]).contiguous() for k in before}
    tag = f"{'episodes-' if episodes else ''}{estimator}-{loss_type}"
    save_file(deltas, str(out / f"split-{tag}-rank{acc.process_index}.safetensors"))
# gigpo's step groups, each rank on one of the two episodes of the by-hand case: groups span both ranks (gather_all)
from rlhf.advantages import step_group_advantages  # noqa: E402
from rlhf.update import gather_all  # noqa: E402
from tests.rlhf.test_episodes import STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, STEP_STATES  # noqa: E402

mine = slice(acc.process_index, acc.process_index + 1)
step = step_group_advantages(
    STEP_ACTIONS[mine], STEP_ENDS[mine], STEP_REWARDS[mine], STEP_STATES[mine], 0.5,
    gather=lambda x: gather_all(acc, x),
)  # fmt: skip
save_file({"step": step.contiguous()}, str(out / f"step-groups-rank{acc.process_index}.safetensors"))
tokenizer = build_tokenizer(
    ["the cat sat on the mat", "a dog ran in the park", "good good"] * 20, vocab_size=300
)
seen = []


def count_good(prompts, completions, **columns):
    seen.extend(prompts)
    return [float(c.count("good")) + len(c) / 100 for c in completions]


EVAL_PROMPTS = ["the cat", "a dog ran", "good", "the park", "a mat"]  # 5: rank 1's share is padded

for estimator in sys.argv[2:]:
    seen.clear()
    args = PPOConfig(
        output_dir=str(out / estimator),
        max_steps=2,
        rollout_batch_size=4,
        num_generations=2,
        mini_batch_size=4,
        micro_batch_size=2,
        max_new_tokens=6,
        learning_rate=1e-3,
        critic_learning_rate=1e-3,
        num_ppo_epochs=1,
        advantage_estimator=estimator,
        disable_tqdm=True,
        plot_metrics=False,
        save_steps=1,
        adaptive_kl=True,
        kl_coef=0.1,
        kl_target=0.01,
        kl_horizon=50,
    )
    prompts = [f"prompt {i}" for i in range(16)]
    trainer = PPOTrainer(
        build_causal_lm(tokenizer),
        [build_reward_model(tokenizer), count_good],
        args,
        datasets.Dataset.from_dict({"prompt": prompts}),
        datasets.Dataset.from_dict({"prompt": EVAL_PROMPTS}),
        processing_class=tokenizer,
    )
    history = trainer.train()
    weights = trainer.accelerator.unwrap_model(trainer.policy).transformer.wte.weight.detach()
    gathered = trainer.accelerator.gather(weights[None])
    rank = trainer.accelerator.process_index
    (out / estimator / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": trainer.accelerator.num_processes,
                "prompts": sorted(set(seen)),
                "weights_equal_across_ranks": bool(torch.equal(gathered[0], gathered[-1])),
                "history": history,
                "kl_coef": trainer.kl_ctl.value,
            }
        )
    )
# 3. evaluation split over the ranks (3 + 2 prompts, padded) equals greedy decoding of every prompt on one process
metrics = trainer.evaluate()
policy = trainer.accelerator.unwrap_model(trainer.policy)
reference = []
for prompt in EVAL_PROMPTS:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    new = policy.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=trainer.args.max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[1] :]
    reference.append(tokenizer.decode(new, skip_special_tokens=True))
(out / f"eval-rank{trainer.accelerator.process_index}.json").write_text(
    json.dumps({"metrics": metrics, "count_good": sum(count_good(EVAL_PROMPTS, reference)) / 5})
)
accelerator = trainer.accelerator
del trainer
end_distributed(accelerator)  # as the recipes end: models released before the process group
