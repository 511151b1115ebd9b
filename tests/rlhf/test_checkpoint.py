"""Checkpoint files: loading runs no code, and every generator (CPU and accelerators) round-trips."""

import errno
import json
import os
import random
import re

import datasets
import numpy as np
import pytest
import torch
from accelerate.utils import DistributedType

from classic.runlog import DiskFullError
from rlhf import checkpoint as ckpt_io


class Planted:
    def __reduce__(self):
        return (os.system, ("echo planted > /dev/null",))


def test_a_planted_pickle_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "policy_optimizer.pt"
    torch.save({"state": {}, "param_groups": [], "payload": Planted()}, path)
    with pytest.raises(
        ValueError,
        match=r"policy_optimizer.pt: refusing to load.*\((posix|os)\.system; loading it could run code",
    ):
        ckpt_io.safe_load(path)
    torch.save(
        {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}, path
    )
    assert ckpt_io.safe_load(path)["param_groups"][0]["betas"] == (0.9, 0.99)  # what the trainer writes loads


def test_rng_state_round_trips_through_a_safe_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(ckpt_io.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt_io.set_rng_state(ckpt_io.safe_load(tmp_path / "rng.pt"))
    got = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_accelerator_generators_are_saved_and_restored(monkeypatch):
    """On a GPU machine the device generators are part of the state (stand-in module: this CPU has none)."""
    saved = [torch.ByteTensor([1, 2, 3]), torch.ByteTensor([4, 5])]
    restored = []

    class FakeCuda:
        @staticmethod
        def is_available():
            return True

        @staticmethod
        def get_rng_state_all():
            return saved

        @staticmethod
        def set_rng_state_all(states):
            restored.append(states)

    monkeypatch.setattr(torch, "cuda", FakeCuda)
    state = ckpt_io.rng_state()
    assert state["cuda"] is saved
    ckpt_io.set_rng_state(state)
    assert restored == [saved]


class OneProcess:
    """The part of an Accelerator that save_checkpoint uses, for one process."""

    is_main_process, process_index, num_processes = True, 0, 1
    distributed_type = DistributedType.NO

    def wait_for_everyone(self) -> None:
        pass

    def get_state_dict(self, model: torch.nn.Module) -> dict:
        return model.state_dict()

    def unwrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model


@pytest.mark.parametrize(
    ("patched", "error"),
    [
        ("save_file", OSError(errno.ENOSPC, "No space left on device")),
        ("torch.save", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")),
    ],
)
def test_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_partial_checkpoint(
    tmp_path, monkeypatch, patched, error
):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    args = (OneProcess(), tmp_path, 1, {"policy": (model, opt)}, {}, {"step": 1}, 2)
    ckpt_io.save_checkpoint(*args)  # a good checkpoint-1 first
    real = {"save_file": ckpt_io.save_file, "torch.save": torch.save}[patched]

    def full_disk(obj, path, *rest, **kwargs):
        real(obj, path, *rest, **kwargs)
        raise error

    if patched == "save_file":
        monkeypatch.setattr(ckpt_io, "save_file", full_disk)
    else:
        monkeypatch.setattr(ckpt_io.torch, "save", full_disk)
    with pytest.raises(DiskFullError) as raised:
        ckpt_io.save_checkpoint(*args[:2], 2, *args[3:])
    message = str(raised.value)
    assert "\n" not in message and message.startswith(
        f"could not save {tmp_path / 'checkpoint-2'}: the disk is probably full ("
    ), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no .tmp-checkpoint-2 left behind
    assert ckpt_io.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]


def test_full_disk_while_saving_the_model_removes_the_half_written_files(
    tmp_path, monkeypatch, tokenizer, policy
):
    from rlhf import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        rollout_batch_size=4,
        mini_batch_size=4,
        micro_batch_size=4,
    )
    data = datasets.Dataset.from_dict({"prompt": ["the movie", "a dog"] * 2})
    trainer = PPOTrainer(
        policy, lambda prompts, completions, **k: [0.0] * len(prompts), args, data, processing_class=tokenizer
    )
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("kept")  # a file the save does not touch stays

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        trainer.tokenizer, "save_pretrained", full_disk
    )  # fails after the weights were written
    with pytest.raises(
        DiskFullError, match=rf"^could not save {re.escape(str(out))}: the disk is probably full"
    ):
        trainer.save_model(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no model.safetensors / config.json left


def test_rotation_only_removes_this_runs_older_checkpoints(tmp_path):
    """Another run's higher-numbered checkpoint once won the sort and made a new run delete each checkpoint it
    had just written; rotation now keeps the newest `save_total_limit` of this run's own."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    other = tmp_path / "checkpoint-9"
    other.mkdir()
    (other / "trainer_state.json").write_text(json.dumps({"step": 9, "run_id": "other"}))
    for step in (1, 2, 3):
        state = {"step": step, "run_id": "mine"}
        ckpt_io.save_checkpoint(OneProcess(), tmp_path, step, {"policy": (model, opt)}, {}, state, 2)
    assert [c.name for c in ckpt_io.list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-9",
    ]
    ckpt_io.save_checkpoint(
        OneProcess(), tmp_path, 4, {"policy": (model, opt)}, {}, {"step": 4, "run_id": "mine"}, 1
    )
    assert [c.name for c in ckpt_io.list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-9"]


def small_run(tmp_path, tokenizer, **overrides):
    from rlhf import PPOTrainer
    from rlhf.tiny import build_causal_lm
    from tests.rlhf.test_trainer import count_good, dataset, small_config

    args = small_config(tmp_path, **{"save_steps": 1, "save_total_limit": None, **overrides})
    return PPOTrainer(
        build_causal_lm(tokenizer, seed=0), count_good, args, dataset(), processing_class=tokenizer
    )


def test_latest_falls_back_to_the_newest_complete_checkpoint_and_leftovers_are_cleaned(tmp_path, tokenizer):
    """A kill can leave an incomplete newest checkpoint, a half-deleted old one (rotation), a .tmp-checkpoint-*
    (a write) and a .metrics.jsonl.*.tmp (a log rewrite): 'latest' resumes the newest complete checkpoint and
    says so in one line, and the leftovers are removed; an explicit incomplete checkpoint is one line naming
    what it lacks."""
    from classic.runlog import read_metrics

    small_run(tmp_path, tokenizer, max_steps=4).train()
    run = tmp_path / "run"
    (run / "checkpoint-4" / "trainer_state.json").unlink()  # the newest: incomplete
    (run / "checkpoint-2" / "policy.safetensors").unlink()  # an old one, half deleted
    (run / ".tmp-checkpoint-9").mkdir()
    (run / ".metrics.jsonl.x1y2.tmp").write_text('{"step": 1}\n')
    with pytest.raises(
        FileNotFoundError, match=r"checkpoint-4'?: not a complete checkpoint directory \(no trainer_state"
    ):
        small_run(tmp_path, tokenizer, max_steps=5, resume_from_checkpoint=str(run / "checkpoint-4"))
    resumed = small_run(tmp_path, tokenizer, max_steps=5, resume_from_checkpoint="latest")
    with pytest.warns(UserWarning, match=r"checkpoint-4 is incomplete \(no trainer_state.json\); resuming from "
                      r"checkpoint-3, the newest complete one"):  # fmt: skip
        resumed.train()
    assert resumed.step == 5 and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name or p.name.startswith(".")) == [
        "checkpoint-1", "checkpoint-3", "checkpoint-4", "checkpoint-5",
    ]  # fmt: skip
    assert (run / "checkpoint-4" / "trainer_state.json").is_file()  # step 4 redone and saved whole


def test_a_checkpoint_resumed_with_another_estimator_is_refused(tmp_path, tokenizer):
    """A gae checkpoint (policy + critic) resumed as grpo would drop the critic and change the advantages without
    a word (and grpo -> gae would fail on the missing critic): one line naming both, before any work."""
    small_run(tmp_path, tokenizer, max_steps=1, advantage_estimator="gae").train()
    with pytest.raises(
        ValueError, match=r"checkpoint-1 was trained with advantage_estimator='gae'.*this run has 'grpo'"
    ):
        small_run(
            tmp_path, tokenizer, max_steps=2, resume_from_checkpoint="latest", advantage_estimator="grpo",
            num_generations=2, rollout_batch_size=2,
        )  # fmt: skip
