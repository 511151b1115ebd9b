"""Chat prompts, remote code, bf16 and gradient checkpointing."""

import json

import datasets
import pytest
import torch

from rlhf import PPOConfig, PPOTrainer
from rlhf.hub import load_model_config
from rlhf.rewards import RewardModel

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        rollout_batch_size=4,
        mini_batch_size=4,
        micro_batch_size=4,
        max_new_tokens=4,
        num_ppo_epochs=1,
        disable_tqdm=True,
        plot_metrics=False,
        critic_init="policy",
    )
    return PPOConfig(**{**base, **kw})


def test_chat_prompts_use_the_chat_template(tmp_path, tokenizer, policy, reward_model):
    tokenizer = (
        tokenizer.__class__.from_pretrained(tokenizer.name_or_path) if tokenizer.name_or_path else tokenizer
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    received = []

    def record(prompts, completions, **kw):
        received.extend(prompts)
        return [0.0] * len(completions)

    messages = [[{"role": "user", "content": f"say {w}"}] for w in ("good", "bad", "cat", "dog")]
    trainer = PPOTrainer(
        policy,
        [record, reward_model],
        config(tmp_path),
        datasets.Dataset.from_dict({"prompt": messages}),
        processing_class=tokenizer,
        reward_processing_classes=tokenizer,
    )
    expected = tokenizer("<user>say good<assistant>", add_special_tokens=False)["input_ids"]
    assert trainer.source.train.ids[0] == expected
    trainer.train()
    assert received and all(isinstance(p, list) and p[0]["role"] == "user" for p in received)
    rm = next(f for f in trainer.reward_funcs if isinstance(f, RewardModel))
    assert rm._text(messages[0], " ok") == "<user>say good<assistant> ok"


def test_chat_prompts_without_a_template_are_an_error(tmp_path, tokenizer, policy):
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="row 0: chat-message prompt but the tokenizer has no chat template"):
        PPOTrainer(
            policy,
            lambda prompts, completions, **k: [0.0] * len(prompts),
            config(tmp_path),
            datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]] * 4}),
            processing_class=tokenizer,
        )


def test_remote_code_is_refused_unless_asked(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "my_custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"}}
        )
    )
    (tmp_path / "configuration_custom.py").write_text(
        "from transformers import PretrainedConfig\n\nclass CustomConfig(PretrainedConfig):\n    model_type = 'my_custom'\n"
    )
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model_config(str(tmp_path), trust_remote_code=False)
    assert load_model_config(str(tmp_path), trust_remote_code=True).model_type == "my_custom"


@pytest.mark.parametrize("option", ["bf16", "gradient_checkpointing"])
def test_bf16_and_gradient_checkpointing_train(tmp_path, tokenizer, policy, option):
    before = policy.transformer.h[0].mlp.c_fc.weight.detach().clone()
    trainer = PPOTrainer(
        policy,
        lambda prompts, completions, **k: [len(c) / 10 for c in completions],
        config(tmp_path, **{option: True}),
        datasets.Dataset.from_dict({"prompt": ["a"] * 4}),
        processing_class=ensure_pad(tokenizer),
    )
    row = trainer.train()[-1]
    assert all(v is None or v == v for v in row.values())  # no NaN
    after = trainer.accelerator.unwrap_model(trainer.policy).transformer.h[0].mlp.c_fc.weight
    assert not torch.equal(before, after.detach().float())


def ensure_pad(tokenizer):
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    return tokenizer


def test_reward_model_text_ends_with_eos_like_trl_reward_training(tokenizer, reward_model):
    rm = RewardModel(reward_model, tokenizer, "rm")
    assert rm._text("the movie", " was good") == "the movie was good" + tokenizer.eos_token
    assert rm._text("the movie", " was good" + tokenizer.eos_token).count(tokenizer.eos_token) == 1
    assert RewardModel(reward_model, tokenizer, "rm", append_eos=False)._text("a", "b") == "ab"


@pytest.mark.parametrize("column", ["completions", "prompts"])
def test_a_column_named_like_a_reward_argument_is_refused_up_front(tmp_path, tokenizer, policy, column):
    """Extra columns go to the reward functions as keyword arguments next to prompts= and completions=; a column
    of either name used to fail at step 1 ("got multiple values for argument")."""
    data = datasets.Dataset.from_dict({"prompt": ["the movie", "a dog"] * 2, column: ["x"] * 4})
    message = rf"^train_dataset: column\(s\) \['{column}'\] clash with the reward functions' arguments; rename them$"
    with pytest.raises(ValueError, match=message):
        PPOTrainer(
            policy,
            lambda prompts, completions, **k: [0.0] * len(prompts),
            config(tmp_path),
            data,
            processing_class=tokenizer,
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"top_p": 0.0}, r"^PPOConfig\.top_p must be in \(0, 1\] \(1 = no nucleus filtering\), got 0\.0$"),
        ({"top_p": 1.5}, r"^PPOConfig\.top_p must be in \(0, 1\] \(1 = no nucleus filtering\), got 1\.5$"),
        ({"top_p": float("nan")}, r"^PPOConfig\.top_p must be in \(0, 1\] .*got nan$"),
        ({"top_k": -1}, r"^PPOConfig\.top_k must be an integer >= 0 \(0 = no top-k filtering\), got -1$"),
        ({"temperature": float("inf")}, r"^PPOConfig\.temperature must be a finite number > 0, got inf$"),
        ({"temperature": float("nan")}, r"^PPOConfig\.temperature must be a finite number > 0, got nan$"),
        (
            {"eval_temperature": float("inf")},
            r"^PPOConfig\.eval_temperature must be >= 0 \(0 = greedy\), got inf$",
        ),
    ],
    ids=[
        "top_p-0",
        "top_p-1.5",
        "top_p-nan",
        "top_k-neg",
        "temperature-inf",
        "temperature-nan",
        "eval_temp-inf",
    ],
)
def test_sampling_settings_are_checked_up_front(tmp_path, setting, message):
    """Settings that would fail at the first generate call (or sample from nothing) are one line at construction."""
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **setting)


def test_sampling_settings_at_their_limits_are_accepted(tmp_path):
    config(tmp_path, top_p=1.0, top_k=0, temperature=1e-3, eval_temperature=0.0)
    config(tmp_path, top_p=1e-6, top_k=50, temperature=5.0, eval_temperature=0.7)


def test_rlhf_train_without_a_config_is_one_line(capsys):
    """`rlhf train` with no --config: the required fields are named in one line (was a dataclass TypeError)."""
    from rlhf.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["train"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("rlhf train: error: ") and "model_name_or_path" in err and "--config" in err


@pytest.mark.parametrize(
    "bad, message",
    [
        ([{"role": "user"}], r"train_dataset row 2: chat message 0 has no 'content'"),
        (
            [{"role": "user", "content": "hi"}, {"content": "x"}],
            r"train_dataset row 2: chat message 1 has no 'role'",
        ),
    ],
)
def test_a_chat_message_without_content_or_role_names_the_row(
    tmp_path, tokenizer, policy, monkeypatch, bad, message
):
    monkeypatch.setattr(tokenizer, "chat_template", CHAT_TEMPLATE)  # the session's tokenizer: restored after
    good = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match=message + r" \(each message is"):
        PPOTrainer(
            policy,
            lambda prompts, completions, **k: [0.0] * len(prompts),
            config(tmp_path),
            datasets.Dataset.from_dict({"prompt": [good, good, bad, good]}),
            processing_class=tokenizer,
        )


@pytest.mark.parametrize(
    "setting",
    [
        {"learning_rate": -1.0},
        {"learning_rate": 0.0},
        {"critic_learning_rate": float("inf")},
        {"critic_learning_rate": float("nan")},
        {"adam_eps": -1e-8},
        {"weight_decay": -0.1},
    ],
)
def test_optimizer_settings_are_checked_up_front(setting):
    (name,) = setting
    with pytest.raises(ValueError, match=rf"PPOConfig.{name} must be a finite number"):
        PPOConfig(**setting)


def test_a_recipes_negative_learning_rate_is_one_line(capsys):
    from classic.cli import parse_config_or_exit
    from rlhf.train_command import PPORecipeConfig

    argv = ["--model_name_or_path", "m", "--dataset_name", "d", "--task", "imdb", "--learning_rate", "-1"]
    with pytest.raises(SystemExit):
        parse_config_or_exit(PPORecipeConfig, "recipes/ppo.py", argv)
    err = capsys.readouterr().err
    assert err == "recipes/ppo.py: error: PPOConfig.learning_rate must be a finite number > 0, got -1.0\n"
