"""The model card save_model writes, and push_to_hub (wired to huggingface_hub; the upload itself is faked)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from classic.runlog import read_metrics
from rlhf import PPOTrainer
from rlhf.card import _fmt
from tests.rlhf.test_eval import eval_dataset
from tests.rlhf.test_trainer import completion_chars, count_good, dataset, small_config


@pytest.fixture
def base_dir(tmp_path, tokenizer, policy):
    path = tmp_path / "base"
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_model_card_names_the_numbers_of_its_run(tmp_path, tokenizer, base_dir):
    args = small_config(
        tmp_path,
        max_steps=3,
        advantage_estimator="grpo",
        num_generations=2,
        rollout_batch_size=2,
        eval_steps=3,
        eval_on_start=True,
        metric_for_best_model="eval/reward/count_good",
        reward_weights=[1.0, 0.0],
        plot_metrics=True,
    )
    trainer = PPOTrainer(
        str(base_dir),
        [completion_chars, count_good],
        args,
        dataset(),
        eval_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    out = tmp_path / "model"
    trainer.save_model(out)
    card = ModelCard.load(out / "README.md")  # the Hub's parser
    assert card.data.base_model == str(base_dir)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"rlhf", "grpo"} <= set(card.data.tags)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first, last = rows[1], rows[-1]  # rows[0] is the step-0 evaluation
    assert f"| reward | {_fmt(first['reward'])} | {_fmt(last['reward'])} |" in card.text
    assert f"| kl | {_fmt(first['kl'])} | {_fmt(last['kl'])} |" in card.text
    start, end = rows[0]["eval/reward/count_good"], last["eval/reward/count_good"]
    assert f"| eval/reward/count_good | {_fmt(start)} | {_fmt(end)} |" in card.text
    assert "Evaluation (greedy, 1 completion(s) per prompt), step 0 and step 3" in card.text
    assert f"`checkpoint-3` ({_fmt(end)})" in card.text
    assert "`completion_chars` (weight 1), `count_good` (weight 0)" in card.text
    assert "32 rows; held-out evaluation on 5 prompts" in card.text
    assert "| advantage_estimator | grpo |" in card.text and "num_generations: 2" in card.text
    for name in ("reward.png", "eval.png", "kl.png"):  # copied next to the card, which shows them
        assert (out / name).stat().st_size > 1000 and f"![{name[:-4]}]({name})" in card.text
    AutoModelForCausalLM.from_pretrained(out)  # the card sits beside a loadable model


def test_push_to_hub_needs_a_token_before_any_work(tmp_path, tokenizer, policy, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login
    with pytest.raises(ValueError, match="push_to_hub=True but no Hugging Face token"):
        PPOTrainer(
            policy,
            count_good,
            small_config(tmp_path, push_to_hub=True),
            dataset(),
            processing_class=tokenizer,
        )
    assert not (tmp_path / "run").exists()


def test_push_to_hub_uploads_the_saved_folder(tmp_path, tokenizer, policy, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the suite runs offline; this test fakes the Hub
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **kw: {"name": "someone"})
    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or SimpleNamespace(repo_id=repo_id),
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "upload_folder",
        lambda self, **kw: calls.append(("upload", kw)) or SimpleNamespace(commit_url="https://hub/commit/1"),
    )
    args = small_config(tmp_path, max_steps=1, push_to_hub=True, hub_private_repo=True)
    trainer = PPOTrainer(policy, count_good, args, dataset(), processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    (create, repo_id, kw), (upload, up) = calls
    assert (create, repo_id, kw["private"]) == ("create", "run", True)  # default id: the output_dir's name
    assert up["repo_id"] == "run" and up["folder_path"] == str(tmp_path / "run")
    assert "checkpoint-*" in up["ignore_patterns"]  # the model, not the training checkpoints
    assert (tmp_path / "run" / "README.md").is_file()

    def offline(self, **kw):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", offline)
    with pytest.raises(RuntimeError, match=r"uploading .* to 'run' failed \(ConnectionError.*intact"):
        trainer.save_model()
    assert (tmp_path / "run" / "model.safetensors").is_file()


def fake_hub(monkeypatch, calls):
    """HfApi whose upload_folder records the files it would send (huggingface_hub's own filter over the folder's
    files, as upload_folder applies it) instead of sending them."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    def upload_folder(self, folder_path, allow_patterns=None, ignore_patterns=None, **kw):
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        calls.append(
            sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        )
        return SimpleNamespace(commit_url="https://hub/commit/1")

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the suite runs offline; these tests fake the Hub
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **kw: {"name": "someone"})
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id)
    )
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


@pytest.mark.parametrize("upload_logs", [False, True])
def test_push_to_hub_uploads_the_model_not_the_prompt_logs(
    tmp_path, tokenizer, policy, monkeypatch, upload_logs
):
    """The model, tokenizer, card, plots and critic; the prompt / completion logs (completions.jsonl,
    eval_completions.jsonl, metrics.jsonl) only with hub_upload_logs=True; never checkpoints."""
    calls: list[list[str]] = []
    fake_hub(monkeypatch, calls)
    args = small_config(
        tmp_path, max_steps=2, save_steps=1, push_to_hub=True, log_completions=True, eval_steps=1,
        plot_metrics=True, **({"hub_upload_logs": True} if upload_logs else {}),  # the default: no logs
    )  # fmt: skip
    trainer = PPOTrainer(policy, count_good, args, dataset(), eval_dataset(), processing_class=tokenizer)
    trainer.train()
    out = tmp_path / "run"
    (out / ".metrics.jsonl.123.tmp").write_text("{}\n")  # a leftover of an interrupted rewrite
    trainer.save_model()
    (uploaded,) = calls
    logs = ["completions.jsonl", "eval_completions.jsonl", "metrics.jsonl"]
    assert all((out / name).is_file() for name in logs)  # the logs exist locally either way
    assert set(logs) <= set(uploaded) if upload_logs else not set(logs) & set(uploaded)
    expected = {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "reward.png", "eval.png", "kl.png", "entropy.png", "losses.png",
                "completion_length.png"}  # fmt: skip
    expected |= {p.relative_to(out).as_posix() for p in (out / "critic").rglob("*") if p.is_file()}
    assert (
        out / "kl_coef.png"
    ).is_file() and "critic/critic.safetensors" in expected  # the card does not show it
    assert set(uploaded) == expected | (set(logs) if upload_logs else set())
    assert not [f for f in uploaded if f.startswith(("checkpoint-", ".")) or f.endswith(".tmp")]
    card = (out / "README.md").read_text()
    assert ("metrics.jsonl" in card) and (("not uploaded" in card) != upload_logs)


def test_push_folder_sends_the_custom_code_of_a_remote_code_model(tmp_path, monkeypatch):
    """A trust_remote_code model's folder holds its modeling code (config.json's auto_map names it): without the
    .py files the uploaded model cannot be loaded. Checkpoints' copies and hidden files still stay local."""
    from rlhf.export import push_folder

    calls: list[list[str]] = []
    fake_hub(monkeypatch, calls)
    for name in ("config.json", "model.safetensors", "modeling_custom.py", "configuration_custom.py",
                 "checkpoint-1/modeling_custom.py", ".cache/x.py"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    push_folder(tmp_path, "someone/custom", None, "test")
    assert calls == [["config.json", "configuration_custom.py", "model.safetensors", "modeling_custom.py"]]


def test_hub_problems_are_refused_before_any_work(tmp_path, tokenizer, policy, monkeypatch):
    """What would make the upload fail after training is checked up front, each in one line saying what to do:
    a repo id the Hub refuses (the default is the output_dir's name), offline mode, an unreachable Hub, a token
    the Hub rejects or one that cannot write."""
    import httpx2 as httpx  # huggingface_hub 2 raises with httpx2 responses
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    from rlhf.export import check_hub_access

    fake_hub(monkeypatch, [])
    bad_dir = str(tmp_path / "my run (v2)")
    with pytest.raises(
        ValueError, match=r"hub_model_id='my run \(v2\)' \(the output_dir's name\) is not a valid"
    ):
        PPOTrainer(policy, count_good, small_config(tmp_path, output_dir=bad_dir, push_to_hub=True), dataset(),
                   processing_class=tokenizer)  # fmt: skip
    assert not (tmp_path / "my run (v2)").exists()  # refused before any work
    with pytest.raises(ValueError, match=r"hub_model_id='a/b/c' is not a valid .*set hub_model_id"):
        check_hub_access("a/b/c", str(tmp_path / "run"))
    assert (
        check_hub_access("someone/my-run_v2", bad_dir) == "someone/my-run_v2"
    )  # an explicit id is used as is
    assert check_hub_access(None, str(tmp_path / "run")) == "run"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="push_to_hub=True with HF_HUB_OFFLINE=1.*unset HF_HUB_OFFLINE"):
        check_hub_access(None, str(tmp_path / "run"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def whoami_fails(err):
        def whoami(self, *a, **kw):
            raise err

        monkeypatch.setattr(huggingface_hub.HfApi, "whoami", whoami)

    request = httpx.Request("GET", "https://huggingface.co/api/whoami-v2")
    whoami_fails(HfHubHTTPError("Invalid user token.", response=httpx.Response(401, request=request)))
    with pytest.raises(ValueError, match=r"token was rejected by the Hub .*huggingface-cli login"):
        check_hub_access(None, str(tmp_path / "run"))
    whoami_fails(httpx.ConnectError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(ValueError, match=r"could not reach the Hub .*ConnectError.*push_to_hub=False"):
        check_hub_access(None, str(tmp_path / "run"))
    read_only = {"name": "someone", "auth": {"accessToken": {"role": "read"}}}
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **kw: read_only)
    with pytest.raises(ValueError, match="read-only.*write"):
        check_hub_access(None, str(tmp_path / "run"))
