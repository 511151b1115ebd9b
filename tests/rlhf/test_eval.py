"""Evaluation during training (eval_dataset / eval_steps / metric_for_best_model) and the best checkpoint."""

import json

import datasets
import pytest
import torch
from safetensors.torch import load_file

from classic.runlog import read_metrics
from rlhf import PPOTrainer
from rlhf import checkpoint as ckpt_io
from tests.rlhf.test_trainer import completion_chars, count_good, dataset, small_config

EVAL_PROMPTS = ["the cat sat", "a bad plot", "good good", "a dog ran", "it was fine"]


def eval_dataset(n=5):
    return datasets.Dataset.from_dict({"prompt": EVAL_PROMPTS[:n]})


def test_eval_metrics_at_the_right_steps_and_equal_greedy_generate(tmp_path, tokenizer, sft_policy):
    """eval/* at step 0 (eval_on_start), every eval_steps and after the last step, nowhere else; the numbers are
    those of HF `generate(do_sample=False)` on every held-out prompt, scored by every function (weight 0 too)."""
    args = small_config(
        tmp_path,
        max_steps=5,
        eval_steps=2,
        eval_on_start=True,
        eval_num_generations=2,
        eval_batch_size=4,  # 10 completions: 3 generate calls, the last one partial
        reward_weights=[1.0, 0.0],
        advantage_estimator="rloo",
        num_generations=2,
        rollout_batch_size=2,
        log_completions=True,
    )
    trainer = PPOTrainer(
        sft_policy,
        [completion_chars, count_good],
        args,
        dataset(),
        eval_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "eval/reward" in r] == [0, 2, 4, 5]
    assert set(rows[0]) == {"step", "time/eval", *trainer.source.eval_metric_names}

    # the reference: greedy HF generate, one prompt at a time (no padding), on the final policy
    policy = trainer.accelerator.unwrap_model(trainer.policy)
    texts = []
    for prompt in EVAL_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        out = policy.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    chars = completion_chars(EVAL_PROMPTS, texts)
    goods = count_good(EVAL_PROMPTS, texts)
    last = rows[-1]
    assert last["eval/reward"] == pytest.approx(sum(chars) / 5, abs=1e-6)  # weight 0: count_good not in total
    assert last["eval/reward/completion_chars"] == pytest.approx(sum(chars) / 5, abs=1e-6)
    assert last["eval/reward/count_good"] == pytest.approx(sum(goods) / 5, abs=1e-6)
    # greedy: both completions of a prompt are the same, so the std over 10 is that of the 5 values, each twice
    expected_std = torch.tensor(chars * 2, dtype=torch.float64).std().item()
    assert last["eval/reward_std"] == pytest.approx(expected_std, abs=1e-5)
    logged = [
        json.loads(line) for line in (tmp_path / "run" / "eval_completions.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in logged] == [0] * 10 + [2] * 10 + [4] * 10 + [5] * 10
    assert [r["completion"] for r in logged[-10:]] == [t for t in texts for _ in range(2)]


@pytest.mark.parametrize("eval_temperature", [0.0, 1.0])
def test_evaluating_does_not_change_training(tmp_path, tokenizer, sft_state, eval_temperature):
    """Evaluation draws from its own seed: the training run is bitwise the same with or without it, also when
    evaluation samples."""
    from rlhf.tiny import build_causal_lm

    def run(out, **extra):
        policy = build_causal_lm(tokenizer, seed=0)
        policy.load_state_dict(sft_state)
        args = small_config(out, max_steps=3, **extra)
        trainer = PPOTrainer(
            policy,
            completion_chars,
            args,
            dataset(),
            eval_dataset() if extra else None,
            processing_class=tokenizer,
        )
        history = trainer.train()
        return history, trainer.accelerator.unwrap_model(trainer.policy).state_dict()

    plain, plain_weights = run(tmp_path / "a")
    evald, eval_weights = run(
        tmp_path / "b", eval_steps=1, eval_on_start=True, eval_temperature=eval_temperature
    )
    for a, b in zip(plain, evald):
        assert a["reward"] == b["reward"] and a["policy_loss"] == b["policy_loss"]
        assert "eval/reward" in b
    for k in plain_weights:
        assert torch.equal(plain_weights[k], eval_weights[k]), k


class Scripted:
    """A weight-0 'judge' whose eval score is scripted per evaluation (training calls score 0)."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0
        self.__name__ = "judge"

    def __call__(self, prompts, completions, **_):
        if prompts[0] in EVAL_PROMPTS:
            self.calls += 1
            return [self.values[self.calls - 1]] * len(prompts)
        return [0.0] * len(prompts)


@pytest.mark.parametrize("greater_is_better, best", [(True, 2), (False, 1)])
def test_best_checkpoint_survives_rotation_and_resume(
    tmp_path, tokenizer, sft_policy, greater_is_better, best
):
    judge = Scripted([1.0, 5.0, 2.0, 3.0, 4.0, 3.0, 3.0])
    common = dict(
        eval_steps=1,
        save_steps=1,
        save_total_limit=1,
        reward_weights=[1.0, 0.0],
        metric_for_best_model="reward/judge",  # the eval/ prefix is added
        greater_is_better=greater_is_better,
    )
    trainer = PPOTrainer(
        sft_policy,
        [completion_chars, judge],
        small_config(tmp_path, max_steps=5, **common),
        dataset(),
        eval_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    out = tmp_path / "run"
    kept = [c.name for c in ckpt_io.list_checkpoints(out)]
    assert kept == [f"checkpoint-{best}", "checkpoint-5"]
    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["best_checkpoint"] == f"checkpoint-{best}"
    assert state["best_metric"] == (5.0 if greater_is_better else 1.0)
    # the best checkpoint holds the weights of its step, not later ones
    assert not torch.equal(
        load_file(out / f"checkpoint-{best}" / "policy.safetensors")["transformer.wte.weight"],
        load_file(out / "checkpoint-5" / "policy.safetensors")["transformer.wte.weight"],
    )
    # resumed, the run still knows its best and keeps protecting it
    resumed = PPOTrainer(
        sft_policy,
        [completion_chars, judge],
        small_config(tmp_path, max_steps=7, resume_from_checkpoint="latest", **common),
        dataset(),
        eval_dataset(),
        processing_class=tokenizer,
    )
    assert resumed.best.checkpoint is None  # restored when training starts
    resumed.train()
    assert resumed.best.checkpoint == f"checkpoint-{best}"
    assert [c.name for c in ckpt_io.list_checkpoints(out)] == [f"checkpoint-{best}", "checkpoint-7"]


def test_load_best_model_at_end_saves_the_best_checkpoints_weights(tmp_path, tokenizer, sft_policy):
    """Scripted eval values 1, 5, 2, 3, 4: the best is step 2, so after 5 steps the trainer holds checkpoint-2's
    policy, save_model writes it, and the card says where the weights come from."""
    from rlhf import PPOConfig

    judge = Scripted([1.0, 5.0, 2.0, 3.0, 4.0])
    trainer = PPOTrainer(
        sft_policy,
        [completion_chars, judge],
        small_config(
            tmp_path,
            max_steps=5,
            eval_steps=1,
            save_steps=0,
            save_total_limit=1,
            reward_weights=[1.0, 0.0],
            metric_for_best_model="reward/judge",
            load_best_model_at_end=True,
        ),
        dataset(),
        eval_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    out = tmp_path / "run"
    best = load_file(out / "checkpoint-2" / "policy.safetensors")
    last = load_file(out / "checkpoint-5" / "policy.safetensors")
    assert not torch.equal(best["transformer.wte.weight"], last["transformer.wte.weight"])
    held = dict(trainer.accelerator.unwrap_model(trainer.policy).named_parameters())
    for name, weight in best.items():
        assert torch.equal(held[name].detach(), weight), name
    assert trainer.step == 5 and trainer.loaded_checkpoint == "checkpoint-2"
    trainer.save_model(tmp_path / "final")
    saved = load_file(tmp_path / "final" / "model.safetensors")
    assert torch.equal(saved["transformer.wte.weight"], best["transformer.wte.weight"])
    assert "weights in this folder are `checkpoint-2`'s" in (tmp_path / "final" / "README.md").read_text()
    with pytest.raises(ValueError, match="load_best_model_at_end needs metric_for_best_model"):
        PPOConfig(eval_steps=1, load_best_model_at_end=True)


def test_eval_configuration_errors(tmp_path, tokenizer, policy):
    from rlhf import PPOConfig

    with pytest.raises(ValueError, match="no eval_dataset was given"):
        PPOTrainer(
            policy, count_good, small_config(tmp_path, eval_steps=2), dataset(), processing_class=tokenizer
        )
    with pytest.raises(ValueError, match=r"metric_for_best_model='eval/reward/gold' is not an eval metric"):
        PPOTrainer(
            policy,
            count_good,
            small_config(tmp_path, eval_steps=2, metric_for_best_model="reward/gold"),
            dataset(),
            eval_dataset(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="needs evaluations: set eval_steps > 0"):
        PPOConfig(metric_for_best_model="eval/reward")
    with pytest.raises(ValueError, match="eval_temperature must be >= 0"):
        PPOConfig(eval_temperature=-1.0)
    with pytest.raises(ValueError, match="eval_dataset: the dataset is empty"):
        PPOTrainer(
            policy,
            count_good,
            small_config(tmp_path),
            dataset(),
            datasets.Dataset.from_dict({"prompt": []}),
            processing_class=tokenizer,
        )
    assert PPOConfig(eval_steps=1, metric_for_best_model="value_loss").greater_is_better is False
    with pytest.raises(
        TypeError, match="5th argument is eval_dataset"
    ):  # the pre-eval_dataset positional call
        PPOTrainer(policy, count_good, small_config(tmp_path), dataset(), tokenizer)


def test_load_best_model_at_end_when_the_best_checkpoint_is_gone(tmp_path, tokenizer, sft_policy):
    """The best checkpoint deleted between runs: the resumed run re-establishes the best among the checkpoints
    that exist (their eval rows in metrics.jsonl), says so in one line, finishes, loads that one and saves the
    model; with no evaluated checkpoint left, loading is skipped with a warning naming the missing directory."""
    import shutil

    common = dict(
        eval_steps=1, save_steps=1, save_total_limit=None, reward_weights=[1.0, 0.0],
        metric_for_best_model="reward/judge", load_best_model_at_end=True,
    )  # fmt: skip
    first = PPOTrainer(
        sft_policy, [completion_chars, Scripted([1.0, 5.0, 2.0])], small_config(tmp_path, max_steps=3, **common),
        dataset(), eval_dataset(), processing_class=tokenizer,
    )  # fmt: skip
    first.train()
    out = tmp_path / "run"
    assert first.best.checkpoint == "checkpoint-2"
    shutil.rmtree(out / "checkpoint-2")
    resumed = PPOTrainer(
        sft_policy, [completion_chars, Scripted([0.5])],
        small_config(tmp_path, max_steps=4, resume_from_checkpoint="latest", **common),
        dataset(), eval_dataset(), processing_class=tokenizer,
    )  # fmt: skip
    with pytest.warns(
        UserWarning, match=r"best checkpoint checkpoint-2 .* is gone.*exist: checkpoint-3 \(2\)"
    ):
        resumed.train()
    assert resumed.step == 4 and resumed.loaded_checkpoint == "checkpoint-3"
    resumed.save_model(tmp_path / "final")
    saved = load_file(tmp_path / "final" / "model.safetensors")
    best = load_file(out / "checkpoint-3" / "policy.safetensors")
    assert torch.equal(saved["transformer.wte.weight"], best["transformer.wte.weight"])
    # gone while the run ran: the best of what is left, or none (the last step's weights stay)
    shutil.rmtree(out / "checkpoint-3")
    with pytest.warns(UserWarning, match="checkpoint-3"):
        assert resumed.load_best_model() == "checkpoint-1"
    shutil.rmtree(out / "checkpoint-1")
    with pytest.warns(UserWarning, match=r"checkpoint-1 .* is gone.*exist: checkpoint-4"):
        assert resumed.load_best_model() is None
    resumed.save_model(tmp_path / "final")


def test_an_eval_dataset_without_the_train_datasets_columns_is_refused_up_front(tmp_path, tokenizer, policy):
    """The reward functions get the dataset's other columns: an eval_dataset lacking one would fail at the first
    evaluation, after training; it is one line naming eval_dataset and the columns, before any work."""

    def needs_label(prompts, completions, label, **_):
        return [float(x) for x in label]

    args = small_config(tmp_path, eval_steps=1)
    with pytest.raises(ValueError, match=r"eval_dataset: no column\(s\) \['label'\] .*train_dataset has"):
        PPOTrainer(
            policy, needs_label, args, dataset(label=[1] * 32), eval_dataset(), processing_class=tokenizer
        )
    evals = eval_dataset().add_column("label", [0] * 5)
    PPOTrainer(policy, needs_label, args, dataset(label=[1] * 32), evals, processing_class=tokenizer)
