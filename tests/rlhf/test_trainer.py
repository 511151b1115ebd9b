import dataclasses
import json
import shutil

import datasets
import pytest
import torch
from safetensors.torch import load_file

import rlhf.update
from classic.cli import parse_config
from classic.runlog import read_metrics
from rlhf import PPOConfig, PPOTrainer
from rlhf import checkpoint as ckpt_io
from rlhf.tiny import build_causal_lm

PROMPTS = ["the movie", "a dog", "the cat", "it was"] * 8
TIMING_KEYS = ("time/", "tokens_per_s")


def count_good(prompts, completions, **columns):
    """Known optimum: every token is ' good'."""
    return [float(c.count(" good")) for c in completions]


def completion_chars(prompts, completions, **columns):
    """A dense reward: every sample differs, so every step has a gradient."""
    return [len(c) / 10 for c in completions]


def small_config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        rollout_batch_size=4,
        num_generations=1,
        mini_batch_size=4,
        micro_batch_size=2,
        max_new_tokens=6,
        learning_rate=3e-4,
        critic_learning_rate=1e-3,
        num_ppo_epochs=2,
        disable_tqdm=True,
        plot_metrics=False,
        critic_init="policy",
    )
    values.update(overrides)
    return PPOConfig(**values)


def dataset(n=32, **extra):
    return datasets.Dataset.from_dict({"prompt": PROMPTS[:n], **extra})


@pytest.mark.parametrize("estimator", ["gae", "rloo"])
def test_reward_rises_to_the_known_optimum_with_bounded_kl(tmp_path, tokenizer, sft_policy, estimator):
    group = 1 if estimator == "gae" else 4
    args = small_config(
        tmp_path,
        max_steps=24,
        rollout_batch_size=16 // group,
        num_generations=group,
        mini_batch_size=16,
        micro_batch_size=16,
        max_new_tokens=8,
        kl_coef=0.02,
        advantage_estimator=estimator,
        lr_scheduler="constant",
    )
    trainer = PPOTrainer(sft_policy, count_good, args, dataset(), processing_class=tokenizer)
    history = trainer.train()
    first = sum(r["reward"] for r in history[:3]) / 3
    last = sum(r["reward"] for r in history[-3:]) / 3
    assert first < 2.0, first  # the SFT model rarely says " good"
    assert last > 6.0, (first, last)  # the optimum is 8 (= max_new_tokens)
    assert 0.0 < history[-1]["kl"] < 40.0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 25))
    for key in (
        "reward/count_good",
        "entropy",
        "clip_fraction",
        "approx_kl",
        "completion_length",
        "eos_fraction",
        "tokens_per_s",
        "time/generate",
        "time/score",
        "time/update",
        "kl_coef",
    ):
        assert key in rows[-1], key
    if estimator == "gae":
        assert "value_loss" in rows[-1] and "explained_variance" in rows[-1]


def test_resume_is_bitwise_identical(tmp_path, tokenizer, policy, reward_model):
    """4 steps straight == 2 steps, a crash in step 3, resume from checkpoint-2, 2 more steps."""
    calls = {"n": 0}

    def crashes_in_step_3(prompts, completions, **columns):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return count_good(prompts, completions)

    crashes_in_step_3.__name__ = "count_good"  # same metric names as the straight run

    def run(out, reward, resume=None):
        args = small_config(
            tmp_path,
            output_dir=str(out),
            max_steps=4,
            save_steps=2,
            resume_from_checkpoint=resume,
            critic_init="reward_model",
            kl_coef=0.1,
            adaptive_kl=True,
            kl_target=0.5,
            kl_horizon=100,
        )
        model = policy.__class__(policy.config)
        model.load_state_dict(policy.state_dict())
        trainer = PPOTrainer(model, [reward_model, reward], args, dataset(), processing_class=tokenizer)
        return trainer, trainer.train()

    straight, _ = run(tmp_path / "a", count_good)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crashes_in_step_3)
    assert not (tmp_path / "b" / "checkpoint-4").exists()
    resumed, _ = run(tmp_path / "b", crashes_in_step_3, resume="latest")
    a = load_file(str(tmp_path / "a" / "checkpoint-4" / "policy.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint-4" / "policy.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = load_file(str(tmp_path / "a" / "checkpoint-4" / "critic.safetensors"))
    cb = load_file(str(tmp_path / "b" / "checkpoint-4" / "critic.safetensors"))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)

    def numbers(path):
        rows = read_metrics(path)
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]

    ma, mb = numbers(tmp_path / "a" / "metrics.jsonl"), numbers(tmp_path / "b" / "metrics.jsonl")
    assert len(ma) == len(mb) == 4
    assert ma == mb
    assert straight.kl_ctl.value == resumed.kl_ctl.value != 0.1


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, tokenizer, policy, monkeypatch):
    calls = {"n": 0}

    def poisoned(prompts, completions, **columns):
        calls["n"] += 1
        return [1.0] * len(completions)

    args = small_config(
        tmp_path,
        max_steps=5,
        save_steps=1,
        advantage_estimator="rloo",
        num_generations=2,
        rollout_batch_size=2,
    )
    trainer = PPOTrainer(policy, poisoned, args, dataset(), processing_class=tokenizer)
    original = rlhf.update.loss_and_backward

    def nan_after_two_steps(acc, models, micro, *args, **kwargs):
        if trainer.step >= 2:
            micro = dataclasses.replace(micro, advantages=micro.advantages * float("nan"))
        return original(acc, models, micro, *args, **kwargs)

    monkeypatch.setattr(rlhf.update, "loss_and_backward", nan_after_two_steps)
    with pytest.raises(FloatingPointError, match=r"step 3.*checkpoint-2"):
        trainer.train()
    names = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint-1", "checkpoint-2"]
    state = load_file(str(tmp_path / "run" / "checkpoint-2" / "policy.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())


def test_lora_reference_is_the_base_model_and_only_adapters_train(tmp_path, tokenizer, policy):
    from peft import LoraConfig

    before = {k: v.clone() for k, v in policy.state_dict().items()}
    args = small_config(
        tmp_path,
        advantage_estimator="grpo",
        num_generations=2,
        rollout_batch_size=2,
        kl_in_loss=True,
        kl_estimator="k3",
        learning_rate=1e-2,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.1, task_type="CAUSAL_LM")
    trainer = PPOTrainer(
        policy, completion_chars, args, dataset(), processing_class=tokenizer, peft_config=lora
    )
    assert trainer.ref_model is None  # no second copy in memory
    # the update runs in training mode: LoRA's dropout must be off like every other (N+ detail)
    dropouts = [m for m in trainer.policy.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0.0 for m in dropouts)
    history = trainer.train()
    assert history[-1]["kl_loss"] > 0
    peft_model = trainer.accelerator.unwrap_model(trainer.policy)
    base = peft_model.get_base_model()
    for name, value in before.items():
        key = name.replace("attn.c_attn.weight", "attn.c_attn.base_layer.weight").replace(
            "attn.c_attn.bias", "attn.c_attn.base_layer.bias"
        )
        assert torch.equal(base.state_dict()[key], value), name
    trainer.save_model(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_saved_model_loads_in_a_text_generation_pipeline(tmp_path, tokenizer, policy):
    from transformers import pipeline

    trainer = PPOTrainer(
        policy, count_good, small_config(tmp_path, max_steps=1), dataset(), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(tmp_path / "final")
    pipe = pipeline("text-generation", model=str(tmp_path / "final"), device="cpu")
    out = pipe("the movie", max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"].startswith("the movie")


def test_fused_activations_compute_the_same_function_in_every_model(
    tmp_path, tokenizer, policy, reward_model
):
    from transformers.activations import GELUTanh, NewGELUActivation

    from rlhf.models import fuse_activations

    ids = tokenizer(["the movie was good", "a dog ran"], return_tensors="pt", padding=True)
    reference = build_causal_lm(tokenizer, seed=0)
    fused = build_causal_lm(tokenizer, seed=0)
    assert fuse_activations(fused) == fused.config.n_layer and fuse_activations(fused) == 0
    expected, got = reference(**ids).logits, fused(**ids).logits
    assert torch.allclose(got, expected, atol=1e-5) and not torch.equal(got, expected)
    expected.sum().backward(), got.sum().backward()
    for a, b in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4)

    args = small_config(tmp_path, advantage_estimator="gae", critic_init="reward_model", max_steps=1)
    trainer = PPOTrainer(policy, reward_model, args, dataset(), processing_class=tokenizer)
    models = [trainer.policy, trainer.ref_model, trainer.critic, trainer.reward_funcs[0].model]
    for model in models:
        kinds = {type(m) for m in model.modules()}
        assert GELUTanh in kinds and NewGELUActivation not in kinds
    trainer.save_model(tmp_path / "final")  # the saved config keeps the original activation
    assert "gelu_new" in (tmp_path / "final" / "config.json").read_text()


def test_gradient_checkpointing_recomputes_layers_and_changes_no_gradient(tmp_path, tokenizer, reward_model):
    results = {}
    for checkpointing in (False, True):
        policy = build_causal_lm(tokenizer, seed=0)
        args = small_config(
            tmp_path / str(checkpointing),
            advantage_estimator="gae",
            critic_init="reward_model",
            gradient_checkpointing=checkpointing,
        )
        trainer = PPOTrainer(policy, reward_model, args, dataset(), processing_class=tokenizer)
        trainer.share_prompts = False  # one forward per pass to count (repeated prompts would add a prefill)
        rollout = trainer.rollout(trainer.batch_indices(0)).experience
        # generation keeps its KV cache with checkpointing on: the same completions either way
        results.setdefault("response_ids", []).append(rollout.response_ids)
        calls = []
        for name, model in (("policy", trainer.policy.transformer), ("critic", trainer.critic.backbone)):
            model.h[0].attn.register_forward_hook(lambda *_, name=name, calls=calls: calls.append(name))
        trainer.models.train(True)
        # one forward + backward of policy and critic on the whole batch
        rlhf.update.loss_and_backward(
            trainer.accelerator, trainer.models, rollout, trainer.loss, trainer.kl_ctl.value, torch.tensor(1.0),
            1.0, {}, share_prompts=False,
        )  # fmt: skip
        grads = [p.grad.clone() for m in (trainer.policy, trainer.critic) for p in m.parameters()]
        results[checkpointing] = (calls, grads)
    assert torch.equal(*results["response_ids"])
    # a layer runs once per forward, and once more in the backward pass when its activations were not kept
    assert results[False][0].count("policy") == 1 and results[True][0].count("policy") == 2
    assert results[False][0].count("critic") == 1 and results[True][0].count("critic") == 2
    for a, b in zip(results[False][1], results[True][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_report_to_tensorboard_logs_what_metrics_jsonl_holds(tmp_path, tokenizer, policy):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = small_config(tmp_path, report_to=["tensorboard"], max_steps=2)
    trainer = PPOTrainer(policy, count_good, args, dataset(), processing_class=tokenizer)
    history = trainer.train()
    trainer.save_model()  # the process group and trackers are still usable after train()
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    logged = EventAccumulator(str(events[0].parent)).Reload()
    for key in ("reward", "policy_loss", "kl"):
        points = logged.Scalars(key)
        assert [p.step for p in points] == [1, 2]
        assert [p.value for p in points] == pytest.approx([row[key] for row in history], rel=1e-6)
    written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["reward"] for row in written] == [row["reward"] for row in history]


def test_an_engine_that_is_asked_for_but_not_set_up_is_an_error(tmp_path, tokenizer, policy, monkeypatch):
    """A launch config asking for FSDP or DeepSpeed gets that engine or an error, never plain data parallel."""
    from rlhf import engines

    monkeypatch.setattr(engines, "requested_engine", lambda: "fsdp")
    with pytest.raises(RuntimeError, match="asks for fsdp but accelerate set up NO.*refusing"):
        PPOTrainer(policy, count_good, small_config(tmp_path), dataset(), processing_class=tokenizer)


# --- bad input -------------------------------------------------------------------------------------------


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rat'\].*learning_rate"):
        parse_config(PPOConfig, ["--learning_rat", "1e-5"])
    with pytest.raises(ValueError, match="mini_batch_size=3 must divide"):
        PPOConfig(rollout_batch_size=4, mini_batch_size=3, micro_batch_size=1)
    with pytest.raises(ValueError, match="micro_batch_size=3 must divide mini_batch_size=4"):
        PPOConfig(rollout_batch_size=4, mini_batch_size=4, micro_batch_size=3)
    with pytest.raises(ValueError, match="num_generations must be >= 2 for advantage_estimator='grpo'"):
        PPOConfig(advantage_estimator="grpo")
    with pytest.raises(ValueError, match=r"advantage_estimator must be one of \['gae', .*got 'ppo2'"):
        parse_config(PPOConfig, ["--advantage_estimator", "ppo2"])
    with pytest.raises(ValueError, match="kl_in_loss=True with kl_estimator='k1'.*'k3'"):
        PPOConfig(kl_in_loss=True)
    with pytest.raises(ValueError, match="kl_coef must be a finite number >= 0, got nan"):
        PPOConfig(kl_coef=float("nan"))
    with pytest.raises(ValueError, match="clip_eps must be a finite number >= 0, got -0.1"):
        PPOConfig(clip_eps=-0.1)
    with pytest.raises(ValueError, match="loss_type"):
        parse_config(PPOConfig, ["--loss_type", "bnpo"])
    PPOConfig(advantage_estimator="reinforce_pp")  # one completion per prompt is enough for REINFORCE++


def test_dataset_errors(tmp_path, tokenizer, policy):
    args = small_config(tmp_path)
    with pytest.raises(ValueError, match="no 'prompt' column"):
        PPOTrainer(
            policy,
            count_good,
            args,
            datasets.Dataset.from_dict({"text": ["a"] * 8}),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="has 0 prompts"):
        PPOTrainer(
            policy, count_good, args, datasets.Dataset.from_dict({"prompt": []}), processing_class=tokenizer
        )
    long_prompt = dataset(n=8).add_item({"prompt": "the cat " * 100})
    with pytest.raises(ValueError, match=r"row 8: prompt has \d+ tokens, more than max_prompt_length=128"):
        PPOTrainer(policy, count_good, args, long_prompt, processing_class=tokenizer)
    with pytest.raises(ValueError, match="exceeds the model's context window"):
        PPOTrainer(
            policy,
            count_good,
            small_config(tmp_path, max_new_tokens=250),
            dataset(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 1"):
        PPOTrainer(
            policy,
            count_good,
            small_config(tmp_path, reward_weights=[1.0, 2.0]),
            dataset(),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="critic_init='reward_model' needs a reward model"):
        PPOTrainer(
            policy,
            count_good,
            small_config(tmp_path, critic_init="reward_model"),
            dataset(),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (lambda prompts, completions, **kw: [1.0], ValueError, "returned 1 values for 4 completions"),
        (
            lambda prompts, completions, **kw: [1.0, float("nan"), 1.0, 1.0],
            ValueError,
            "non-finite value nan at index 1",
        ),
        (lambda prompts, completions, **kw: [1.0, None, 1.0, 1.0], TypeError, "None at index 1"),
        (lambda prompts, completions, **kw: 1 / 0, RuntimeError, "raised ZeroDivisionError"),
    ],
)
def test_bad_reward_function_outputs_name_the_function_and_row(
    tmp_path, tokenizer, policy, bad, error, message
):
    bad.__name__ = "my_reward"
    trainer = PPOTrainer(policy, bad, small_config(tmp_path), dataset(), processing_class=tokenizer)
    with pytest.raises(error, match=f"'my_reward'.*{message}"):
        trainer.train()
    assert not (tmp_path / "run" / "checkpoint-1").exists()


def test_reward_functions_receive_dataset_columns(tmp_path, tokenizer, policy):
    seen = {}

    def uses_answer(prompts, completions, answer, **kw):
        seen.update(zip(prompts, answer))
        return [0.0] * len(completions)

    ds = dataset(answer=[p.upper() for p in PROMPTS])
    PPOTrainer(
        policy, uses_answer, small_config(tmp_path, max_steps=1), ds, processing_class=tokenizer
    ).train()
    assert seen and all(v == k.upper() for k, v in seen.items())


@pytest.mark.parametrize("fallback", ["top_k", "bf16"])
def test_kl_statistic_is_logged_and_moves_beta_with_kl_in_loss(tmp_path, tokenizer, policy, fallback):
    """With the KL in the loss and no sampler log-probs (model.generate for top-k; bf16), the behaviour
    log-probs come from the update's own forward, and so does the KL statistic the adaptive controller needs."""
    extra = {"top_k": 20} if fallback == "top_k" else {"bf16": True}
    args = small_config(
        tmp_path,
        advantage_estimator="grpo",
        num_generations=2,
        rollout_batch_size=2,
        num_ppo_epochs=1,
        kl_in_loss=True,
        kl_estimator="k3",
        adaptive_kl=True,
        kl_coef=0.1,
        kl_target=1e-4,
        kl_horizon=10,
        learning_rate=1e-2,
        max_steps=3,
        **extra,
    )
    trainer = PPOTrainer(policy, completion_chars, args, dataset(), processing_class=tokenizer)
    history = trainer.train()
    kls = [row["kl"] for row in history]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is still the reference
    assert kls[-1] > 0 and all(k is not None for k in kls)
    # beta * (1 + clip(KL / target - 1, +-0.2) * n / horizon), n = 4 completions: down after step 1 (KL 0),
    # up after the last (KL far above the target)
    assert history[1]["kl_coef"] == pytest.approx(0.1 * (1 - 0.2 * 4 / 10))
    assert kls[-1] > 1.2e-4
    assert trainer.kl_ctl.value == pytest.approx(history[-1]["kl_coef"] * (1 + 0.2 * 4 / 10))
    assert "kl_loss" in history[-1]


def test_resume_survives_a_torn_last_metrics_line(tmp_path, tokenizer, policy):
    """A crash mid-write (power loss, full disk) leaves half a row at the end of metrics.jsonl: resume drops it
    with a warning and the rows after the checkpoint, instead of failing on it forever."""

    def run(max_steps, resume=None):
        args = small_config(tmp_path, max_steps=max_steps, save_steps=2, resume_from_checkpoint=resume)
        return PPOTrainer(policy, count_good, args, dataset(), processing_class=tokenizer).train()

    run(3)  # rows 1-3, checkpoint-2 and checkpoint-3
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 4, "rew')
    shutil.rmtree(tmp_path / "run" / "checkpoint-3")  # the crash came before step 3's checkpoint
    with pytest.warns(UserWarning, match=r"metrics.jsonl: line 4 is a torn \(incomplete\) last row"):
        history = run(4, resume="latest")
    assert [r["step"] for r in history] == [3, 4]
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4]


def test_a_fresh_run_into_an_old_runs_directory_is_refused_or_replaces_it(tmp_path, tokenizer):
    """An earlier 4-step run with checkpoints 2 and 4: a new 2-step run there is refused before any work; with
    overwrite_output_dir it replaces the old run (its checkpoints survive rotation, metrics hold only its rows)
    and resume_from_checkpoint='latest' then continues the new run, not the old one."""

    def trainer(**kw):
        args = small_config(tmp_path, save_steps=2, **kw)
        return PPOTrainer(
            build_causal_lm(tokenizer, seed=0), count_good, args, dataset(), processing_class=tokenizer
        )

    trainer(max_steps=4).train()
    run = tmp_path / "run"
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(
        FileExistsError, match=r"already holds a run \(checkpoint-2, checkpoint-4, metrics.jsonl\)"
    ):
        trainer(max_steps=2)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # nothing touched
    new = trainer(max_steps=2, overwrite_output_dir=True)
    new.train()
    assert [c.name for c in ckpt_io.list_checkpoints(run)] == ["checkpoint-2"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    resumed = trainer(max_steps=3, resume_from_checkpoint="latest", save_total_limit=5)
    resumed.train()
    assert resumed.run_id == new.run_id and resumed.step == 3
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_run_that_stopped_before_its_first_checkpoint_is_not_a_dead_end(tmp_path, tokenizer):
    """A run killed at step 2 with no checkpoint yet leaves only metrics.jsonl: the same command is refused with
    advice that works (overwrite_output_dir, not resume), resume_from_checkpoint='latest' says there is nothing to
    resume before any work, and with overwrite_output_dir=True it starts afresh (HF: only when asked)."""

    def stops_at_step_2(prompts, completions, **columns):
        stops_at_step_2.calls += 1
        if stops_at_step_2.calls == 2:
            raise KeyboardInterrupt  # the run is killed in step 2
        return [0.0] * len(prompts)

    stops_at_step_2.calls = 0

    def trainer(**kw):
        args = small_config(tmp_path, **{"max_steps": 3, "save_steps": 0, **kw})
        return PPOTrainer(
            build_causal_lm(tokenizer, seed=0), [count_good, stops_at_step_2], args, dataset(),
            processing_class=tokenizer,
        )  # fmt: skip

    with pytest.raises(KeyboardInterrupt):
        trainer().train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]
    logged = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(FileExistsError, match=r"stopped before its first checkpoint \(metrics.jsonl\): nothing to "
                       r"resume; pass overwrite_output_dir=True") as refused:  # fmt: skip
        trainer()
    assert "resume_from_checkpoint" not in str(refused.value)  # the advice that failed
    with pytest.raises(FileNotFoundError, match=r"resume_from_checkpoint='latest': no checkpoint-\* directory in .*"
                       r"overwrite_output_dir=True"):  # fmt: skip
        trainer(resume_from_checkpoint="latest")
    with pytest.raises(
        FileNotFoundError, match=r"resume_from_checkpoint='.*nope': not a complete checkpoint directory"
    ):
        trainer(resume_from_checkpoint=str(run / "nope"))  # before any work, too
    assert (run / "metrics.jsonl").read_bytes() == logged and len(list(run.iterdir())) == 1  # nothing lost
    stops_at_step_2.calls = -100
    fresh = trainer(resume_from_checkpoint="latest", overwrite_output_dir=True)
    fresh.train()
    assert fresh.step == 3 and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    resumed = trainer(max_steps=4, resume_from_checkpoint="latest", overwrite_output_dir=True)
    resumed.train()  # with a checkpoint there, 'latest' resumes it even with overwrite_output_dir
    assert resumed.run_id == fresh.run_id and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [
        1,
        2,
        3,
        4,
    ]


def test_every_run_leaves_plots_and_rlhf_plot_redraws_them(tmp_path, tokenizer, policy):
    from rlhf.cli import main as rlhf_cli

    args = small_config(tmp_path, max_steps=3, plot_metrics=True, advantage_estimator="gae")
    PPOTrainer(policy, [count_good, completion_chars], args, dataset(), processing_class=tokenizer).train()
    run = tmp_path / "run"
    expected = ["completion_length.png", "entropy.png", "kl.png", "kl_coef.png", "losses.png", "reward.png"]
    assert sorted(p.name for p in run.glob("*.png")) == expected
    for name in expected:
        data = (run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name  # a real, non-empty image
        (run / name).unlink()
    rlhf_cli(["plot", str(run)])
    assert sorted(p.name for p in run.glob("*.png")) == expected


def test_completions_jsonl_has_one_row_per_completion_with_the_documented_fields(
    tmp_path, tokenizer, policy, capsys
):
    args = small_config(
        tmp_path,
        max_steps=2,
        log_completions=True,
        print_completions_steps=2,
        advantage_estimator="grpo",
        num_generations=2,
        rollout_batch_size=2,
        kl_coef=0.0,
    )
    trainer = PPOTrainer(policy, [count_good, completion_chars], args, dataset(), processing_class=tokenizer)

    class TableTracker:  # a tracker that takes tables (as accelerate's wandb and clearml trackers do)
        tables = []

        def log_table(self, name, columns, data, step):
            self.tables.append((name, step, [dict(zip(columns, row)) for row in data]))

    trainer.accelerator.trackers.append(TableTracker())
    history = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4  # 2 prompts x 2 completions per step
    assert TableTracker.tables == [("completions", 1, rows[:4]), ("completions", 2, rows[4:])]
    fields = {
        "step",
        "prompt",
        "completion",
        "reward/count_good",
        "reward/completion_chars",
        "reward",
        "advantage",
        "length",
        "ended_with_eos",
    }
    assert all(set(r) == fields for r in rows)
    for step in (1, 2):
        mine = [r for r in rows if r["step"] == step]
        assert sum(r["reward"] for r in mine) / 4 == pytest.approx(history[step - 1]["reward"], abs=1e-5)
        for r in mine:
            assert r["reward"] == pytest.approx(r["reward/count_good"] + r["reward/completion_chars"])
            assert r["reward/completion_chars"] == pytest.approx(len(r["completion"]) / 10)
        # grpo without KL: each group's two advantages are +-(the same number)
        assert mine[0]["advantage"] == pytest.approx(-mine[1]["advantage"], abs=1e-5)
        # the step's length and per-function statistics are those of its completions
        row, lengths = history[step - 1], [r["length"] for r in mine]
        assert (row["completion_length_min"], row["completion_length_max"]) == (min(lengths), max(lengths))
        assert row["truncated_fraction"] == pytest.approx(1 - sum(r["ended_with_eos"] for r in mine) / 4)
        chars = torch.tensor([r["reward/completion_chars"] for r in mine])
        assert row["reward/completion_chars_std"] == pytest.approx(chars.std().item(), abs=1e-5)
    printed = capsys.readouterr()
    assert "[step 2] reward" in printed.out + printed.err and "[step 1]" not in printed.out + printed.err


def test_two_reward_functions_with_one_name_log_two_metrics(tmp_path, tokenizer, policy):
    """Two lambdas once wrote the same reward/<lambda> key, the second overwriting the first."""
    args = small_config(tmp_path, max_steps=1, reward_weights=[1.0, 0.0])
    trainer = PPOTrainer(
        policy,
        [
            lambda prompts, completions, **kw: [1.0] * len(completions),
            lambda prompts, completions, **kw: [-3.0] * len(completions),
        ],
        args,
        dataset(),
        processing_class=tokenizer,
    )
    row = trainer.train()[-1]
    assert row["reward/<lambda>"] == 1.0 and row["reward/<lambda>_2"] == -3.0
    assert row["reward"] == 1.0  # the weight-0 function is logged, not trained on
