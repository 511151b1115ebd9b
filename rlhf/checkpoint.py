"""Atomic checkpoints that resume bit-for-bit.

A checkpoint is a directory `checkpoint-<step>` holding the trainable weights of the policy (the adapter only,
with LoRA) and of the critic as safetensors, the optimizer and scheduler states and every rank's RNG states (CPU
and accelerator generators) as tensors and plain containers that load with `torch.load(weights_only=True)`, and
`trainer_state.json` (step, KL controller, config); loading a checkpoint someone sent you runs no code. It is
written under a temporary name and renamed when complete, so a crash mid-write leaves the previous checkpoint as
the newest one.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from classic.runlog import explain_full_disk

PREFIX = "checkpoint-"


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (named_parameters() already lists tied weights once)."""
    return {n: p.detach().contiguous().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state))[:5], sorted(set(state) - expected)[:5]
        raise ValueError(
            f"checkpoint {what}: parameters do not match the model (missing {missing}, unexpected {extra})"
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _device_rng_modules() -> dict[str, Any]:
    """The accelerator RNG modules present on this machine (each with get_rng_state_all / set_rng_state_all)."""
    found = {}
    for name in ("cuda", "xpu", "npu", "mlu", "musa"):
        module = getattr(torch, name, None)
        if module is not None and hasattr(module, "get_rng_state_all") and module.is_available():
            found[name] = module
    return found


def rng_state() -> dict[str, Any]:
    """Every generator a step draws from: Python, numpy, torch's CPU generator and each accelerator's (sampling
    and the minibatch permutation run on the device). Plain types and tensors only, so that loading it needs no
    pickle of arbitrary objects (`torch.load(weights_only=True)`)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    for name, module in _device_rng_modules().items():
        state[name] = module.get_rng_state_all()
    mps = getattr(torch, "mps", None)
    if torch.backends.mps.is_available() and mps is not None:
        state["mps"] = mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    for name, module in _device_rng_modules().items():
        if name in state:
            module.set_rng_state_all(state[name])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def safe_load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers: a file with any other pickled object (one that
    would run code when unpickled) is refused, naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refusing to load, it holds pickled objects other than tensors and plain containers "
            f"(loading it could run code); was it written by this trainer? ({str(err).splitlines()[0]})"
        ) from err


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of an interrupted write are ignored)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [
        p
        for p in out.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_checkpoint(path: str, output_dir: str | Path) -> Path:
    if path == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(
                f"resume_from_checkpoint='latest': no checkpoint-* directory in {output_dir}"
            )
        return found[-1]
    ckpt = Path(path)
    if not (ckpt / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"resume_from_checkpoint={path!r}: not a checkpoint directory (no trainer_state.json)"
        )
    return ckpt


def save_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    step: int,
    models: dict[str, torch.nn.Module],
    states: dict[str, Any],
    trainer_state: dict[str, Any],
    save_total_limit: int | None,
) -> Path | None:
    """`_write_checkpoint`, with a full disk reported in one line and the temporary directory removed."""
    final, tmp = Path(output_dir) / f"{PREFIX}{step}", Path(output_dir) / f".tmp-{PREFIX}{step}"
    with explain_full_disk(final, partial=[tmp]):
        return _write_checkpoint(
            accelerator, output_dir, step, models, states, trainer_state, save_total_limit
        )


def _write_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    step: int,
    models: dict[str, torch.nn.Module],
    states: dict[str, Any],
    trainer_state: dict[str, Any],
    save_total_limit: int | None,
) -> Path | None:
    """Write `checkpoint-<step>` atomically. `models` are unwrapped modules saved as trainable safetensors;
    `states` are objects with state_dict() (optimizers, schedulers). Every rank must call this."""
    final = Path(output_dir) / f"{PREFIX}{step}"
    tmp = Path(output_dir) / f".tmp-{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        for name, model in models.items():
            save_file(trainable_state_dict(model), str(tmp / f"{name}.safetensors"))
        for name, obj in states.items():
            torch.save(obj.state_dict(), tmp / f"{name}.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if save_total_limit:
            for old in list_checkpoints(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Any, ckpt: Path, models: dict[str, torch.nn.Module], states: dict[str, Any]
) -> dict[str, Any]:
    for name, model in models.items():
        load_trainable_state_dict(model, load_file(str(ckpt / f"{name}.safetensors")), f"{ckpt}/{name}")
    for name, obj in states.items():
        obj.load_state_dict(safe_load(ckpt / f"{name}.pt"))
    rng_file = ckpt / f"rng_state_{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(
            f"{rng_file}: the checkpoint was written by fewer processes than are running now"
        )
    set_rng_state(safe_load(rng_file))
    return json.loads((ckpt / "trainer_state.json").read_text())
