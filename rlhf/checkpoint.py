"""Atomic checkpoints that resume bit-for-bit.

A checkpoint is a directory `checkpoint-<step>` holding the trainable weights of the policy (the adapter only,
with LoRA) and of the critic as safetensors, the optimizer and scheduler states, every rank's RNG states and
`trainer_state.json` (step, KL controller, config). It is written under a temporary name and renamed when
complete, so a crash mid-write leaves the previous checkpoint as the newest one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


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
        obj.load_state_dict(torch.load(ckpt / f"{name}.pt", map_location="cpu", weights_only=False))
    rng_file = ckpt / f"rng_state_{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(
            f"{rng_file}: the checkpoint was written by fewer processes than are running now"
        )
    set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((ckpt / "trainer_state.json").read_text())
