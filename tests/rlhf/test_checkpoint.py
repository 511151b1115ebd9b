"""Checkpoint files: loading runs no code, and every generator (CPU and accelerators) round-trips."""

import os
import random

import numpy as np
import pytest
import torch

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
