"""Saving a model on a full disk and loading a damaged model.pt: one line naming the file and the cause, and no
half-written file left behind that looks complete."""

import errno
import re

import pytest
import torch

from classic import common
from classic.common import load_model, save_model
from classic.reinforce import ReinforceConfig, load, train
from classic.runlog import DiskFullError

TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 2)


@pytest.mark.parametrize(
    "error",
    [RuntimeError(TORCH_FULL_DISK), OSError(errno.ENOSPC, "No space left on device")],
    ids=["torch-unexpected-pos", "ENOSPC"],
)
def test_full_disk_while_saving_is_one_line_and_leaves_the_old_model(tmp_path, monkeypatch, error):
    path = tmp_path / "model.pt"
    save_model(net(), path)
    before = path.read_bytes()
    real_save = torch.save

    def full_disk(obj, f):
        real_save(obj, f)  # the partial file exists when the error comes, as on a real full disk
        raise error

    monkeypatch.setattr(common.torch, "save", full_disk)
    with pytest.raises(DiskFullError) as raised:
        save_model(torch.nn.Linear(4, 2), path)
    message = str(raised.value)
    assert "\n" not in message
    assert re.match(
        rf"^could not save {re.escape(str(path))}: the disk is probably full \([\d.]+ [KMGT]?i?B free of [\d.]+ [KMGT]?i?B on .*\); "
        r"free some space or choose another output directory, then save again \((RuntimeError|OSError): ",
        message,
    ), message
    assert path.read_bytes() == before  # the previous model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # and model.pt.tmp is gone


def test_other_save_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def refused(obj, f):
        raise PermissionError(errno.EACCES, "Permission denied", str(f))

    monkeypatch.setattr(common.torch, "save", refused)
    with pytest.raises(PermissionError):
        save_model(net(), tmp_path / "model.pt")


@pytest.mark.parametrize("keep", [0.0, 0.5], ids=["empty", "truncated"])
def test_damaged_model_file_names_the_file_and_says_what_to_do(tmp_path, keep):
    path = tmp_path / "model.pt"
    save_model(net(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    message = rf"^model file '{re.escape(str(path))}' is truncated or corrupt \(\d+ bytes; \w+Error: .*\); re-train or re-save it$"
    with pytest.raises(ValueError, match=message):
        load_model(torch.nn.Linear(4, 2), path)


def test_load_of_a_run_with_a_cut_off_model_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("RLBOOK_NO_PROGRESS", "1")
    train(ReinforceConfig(total_timesteps=300, output_dir=str(tmp_path)))
    model = tmp_path / "model.pt"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.pt' is truncated or corrupt .*re-train or re-save it$"):
        load(tmp_path)


@pytest.mark.parametrize(
    "free, total, expected",
    [
        (2**20, 2 * 2**20, "1.0 MiB free of 2.0 MiB"),  # a small file system was '1 MiB free of 0.0 GiB'
        (300 * 2**20, 500 * 2**30, "300 MiB free of 500 GiB"),
        (512, 4 * 2**40, "512 B free of 4.0 TiB"),
    ],
)
def test_the_free_space_in_a_full_disk_message_has_units_that_fit(
    tmp_path, monkeypatch, free, total, expected
):
    from types import SimpleNamespace

    from classic import runlog

    monkeypatch.setattr(
        runlog.shutil, "disk_usage", lambda path: SimpleNamespace(free=free, total=total, used=0)
    )
    assert runlog._free_space(tmp_path) == f"{expected} on {tmp_path}'s file system"
