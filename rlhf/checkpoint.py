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
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from classic.runlog import explain_full_disk, truncate_metrics

PREFIX = "checkpoint-"


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
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
        raise ValueError(
            f"{path}: refusing to load, it holds a pickled object other than tensors and plain containers "
            f"({found.group(1) if found else 'unknown'}; loading it could run code). Was it written by this trainer?"
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


# the per-run logs a fresh run with overwrite_output_dir replaces (appended to as a run goes)
RUN_LOGS = ("metrics.jsonl", "completions.jsonl", "eval_completions.jsonl")


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The id of the run that wrote `checkpoint` (None for checkpoints from before runs had ids)."""
    try:
        return json.loads((checkpoint / "trainer_state.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def previous_run(output_dir: str | Path) -> list[str]:
    """What an earlier run left in `output_dir`: its checkpoints and log files (names), or []."""
    out = Path(output_dir)
    return [c.name for c in list_checkpoints(out)] + [n for n in RUN_LOGS if (out / n).is_file()]


def check_start(args: Any) -> None:
    """PPOTrainer, before any work: the output_dir (`check_output_dir`), and a checkpoint to resume must have been
    trained with this run's advantage estimator (`check_same_estimator`)."""
    check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
    path = resolve_checkpoint(
        args.resume_from_checkpoint, args.output_dir, start_afresh=args.overwrite_output_dir, warn=False
    )
    if path is not None:
        check_same_estimator(path, args.advantage_estimator)


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Before any work. A fresh run (no resume_from_checkpoint) into a directory holding another run's checkpoints
    or metrics is refused unless `overwrite`: it would mix with, rotate away or resume from the other run. A
    checkpoint to resume from must exist (`latest` with none: only with `overwrite`, which then starts afresh)."""
    found = previous_run(output_dir)
    if found and not resume and not overwrite:
        shown = ", ".join(found[-3:]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
        if not list_checkpoints(output_dir):  # logs only: the run stopped before its first checkpoint
            raise FileExistsError(
                f"output_dir={str(output_dir)!r} holds the logs of a run that stopped before its first checkpoint "
                f"({shown}): nothing to resume; pass overwrite_output_dir=True to replace them, or choose another "
                "output_dir"
            )
        raise FileExistsError(
            f"output_dir={str(output_dir)!r} already holds a run ({shown}); pass resume_from_checkpoint='latest' "
            "to continue it, overwrite_output_dir=True to replace it, or choose another output_dir"
        )
    resolve_checkpoint(resume, output_dir, start_afresh=overwrite, warn=False)


def check_same_estimator(checkpoint: Path, estimator: str) -> None:
    """A checkpoint resumes only under the estimator it was trained with: another one changes the advantages and
    the trained parts (gae's critic would be dropped without a word; a critic-free checkpoint has none for gae)."""
    saved = json.loads((checkpoint / "trainer_state.json").read_text()).get("config", {})
    if saved.get("advantage_estimator", estimator) != estimator:
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint} was trained with advantage_estimator="
            f"{saved['advantage_estimator']!r}, this run has {estimator!r}: resume with "
            f"advantage_estimator={saved['advantage_estimator']!r}, or start a new run (overwrite_output_dir=True "
            "or another output_dir)"
        )


def clear_previous_run(output_dir: str | Path) -> None:
    """overwrite_output_dir: remove the earlier run's checkpoints (and interrupted writes) and metrics file."""
    out = Path(output_dir)
    for path in list_checkpoints(out) + sorted(out.glob(f".tmp-{PREFIX}*")):
        shutil.rmtree(path, ignore_errors=True)
    for name in RUN_LOGS:
        (out / name).unlink(missing_ok=True)
        for path in out.glob(f".{name}.*.tmp"):  # an interrupted rewrite of the log
            path.unlink(missing_ok=True)


# what every checkpoint holds (trainer_state.json is written last, then the directory is renamed into place; a
# kill while rotation deletes an old checkpoint can leave any subset)
REQUIRED_FILES = ("trainer_state.json", "policy.safetensors")


def missing_files(checkpoint: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (checkpoint / name).is_file()]


def resolve_checkpoint(
    path: str | None, output_dir: str | Path, start_afresh: bool = False, warn: bool = True
) -> Path | None:
    """The checkpoint resume_from_checkpoint names: a directory, or 'latest' for the newest complete one in
    output_dir (None: no resume); an incomplete newer one is passed over, said in one line when `warn`. With
    'latest' and no complete checkpoint: None when `start_afresh` (overwrite_output_dir), else a one-line error."""
    if not path:
        return None
    if path != "latest":
        if missing := missing_files(Path(path)):
            raise FileNotFoundError(
                f"resume_from_checkpoint={path!r}: not a complete checkpoint directory (no {', '.join(missing)})"
            )
        return Path(path)
    found = list_checkpoints(output_dir)
    complete = [c for c in found if not missing_files(c)]
    if not complete and start_afresh:
        return None
    if not complete:
        raise FileNotFoundError(
            f"resume_from_checkpoint='latest': no {'complete ' if found else ''}checkpoint-* directory in "
            f"{output_dir}, nothing to resume; pass overwrite_output_dir=True as well to start afresh there (its "
            "logs are replaced), or drop resume_from_checkpoint for a new output_dir"
        )
    newer = found[found.index(complete[-1]) + 1 :]  # incomplete: a write or a deletion was cut short
    if warn and newer:
        skipped = ", ".join(
            f"{c.name} is incomplete (no {', '.join(missing_files(c))})" for c in reversed(newer)
        )
        warnings.warn(
            f"resume_from_checkpoint='latest': {skipped}; resuming from {complete[-1].name}, the newest complete "
            "one",
            stacklevel=2,
        )
    return complete[-1]


def remove_leftovers(output_dir: str | Path, step: int) -> list[str]:
    """At resume (rank 0): what a kill left behind in output_dir: `.tmp-checkpoint-*` (a checkpoint being
    written), incomplete checkpoints older than `step` (one being deleted by rotation) and `.<log>.*.tmp` (a log
    being rewritten). Returns the names removed. Incomplete newer checkpoints are left: the run rewrites them."""
    out = Path(output_dir)
    removed = []
    for path in sorted(out.glob(f".tmp-{PREFIX}*")) + [
        c for c in list_checkpoints(out) if int(c.name[len(PREFIX) :]) < step and missing_files(c)
    ]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    for name in RUN_LOGS:
        for path in sorted(out.glob(f".{name}.*.tmp")):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _deepspeed_safe_globals() -> list:
    """The DeepSpeed classes its optimizer files pickle (an enum, a loss-scale record, ZeRO-2's parameter-slice
    record; plain data, no code runs to rebuild them): allowed in the weights-only check below, which refuses
    anything else."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def _check_deepspeed_files(directory: Path) -> None:
    """DeepSpeed reads its own checkpoint files with torch.load(weights_only=False); read each one weights-only
    first (tensors, plain containers and the allowed DeepSpeed records), so a planted object is refused before
    DeepSpeed ever unpickles it."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        for path in sorted(directory.rglob("*.pt")):
            safe_load(path)


def truncate_run_logs(output_dir: str | Path, step: int) -> None:
    """At resume (rank 0): drop the rows of the run's logs (RUN_LOGS) written after `step` (the resumed run re-does
    those steps), after removing what a kill left behind (`remove_leftovers`)."""
    remove_leftovers(output_dir, step)
    for name in RUN_LOGS:
        if (Path(output_dir) / name).is_file():
            truncate_metrics(Path(output_dir) / name, step)


def trained_parts(models: Any, schedulers: list[Any]) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """What a checkpoint holds of the trained models (`rlhf.update.TrainedModels`): {name: (model, optimizer)}
    and {name: scheduler}, the critic's only when there is one."""
    trained = {"policy": (models.policy, models.policy_opt)}
    named = {"policy": schedulers[0]}
    if models.critic is not None:
        trained["critic"] = (models.critic, models.critic_opt)
        named["critic"] = schedulers[1]
    return trained, named


def trainer_state(
    step: int,
    run_id: str,
    kl_controller: dict[str, Any],
    engine: str,
    world_size: int,
    config: dict[str, Any],
    best_metric: float | None = None,
    best_checkpoint: str | None = None,
) -> dict[str, Any]:
    """The trainer's own state in a checkpoint (trainer_state.json): where the run is, the run it belongs to, the
    KL controller, what wrote it (engine and world size, checked at resume), its config, the best so far."""
    return {
        "step": step,
        "run_id": run_id,
        "kl_controller": kl_controller,
        "engine": engine,
        "world_size": world_size,
        "config": config,
        "best_metric": best_metric,
        "best_checkpoint": best_checkpoint,
    }


def save_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    step: int,
    trained: dict[str, tuple[Any, Any]],
    schedulers: dict[str, Any],
    trainer_state: dict[str, Any],
    save_total_limit: int | None,
    keep: str | None = None,
) -> Path | None:
    """`_write_checkpoint`, with a full disk reported in one line and the temporary directory removed."""
    final, tmp = Path(output_dir) / f"{PREFIX}{step}", Path(output_dir) / f".tmp-{PREFIX}{step}"
    with explain_full_disk(final, partial=[tmp]):
        return _write_checkpoint(
            accelerator, output_dir, step, trained, schedulers, trainer_state, save_total_limit, keep
        )


def _write_checkpoint(
    accelerator: Any,
    output_dir: str | Path,
    step: int,
    trained: dict[str, tuple[Any, Any]],
    schedulers: dict[str, Any],
    trainer_state: dict[str, Any],
    save_total_limit: int | None,
    keep: str | None = None,
) -> Path | None:
    """Write `checkpoint-<step>` atomically. Every rank must call this (gathering sharded weights is a collective).

    trained: name -> (prepared model, prepared optimizer). Each model's trainable weights are gathered whole and
    written as `<name>.safetensors` whatever the engine; the optimizer state is written as `<name>_optimizer.pt`
    (DDP: the one replicated state; FSDP2: gathered whole, keyed by parameter name) or, under DeepSpeed, as the
    engine's own per-rank checkpoint in `deepspeed/<name>/` (its fp32 master weights and sharded states).
    save_total_limit rotates out this run's oldest checkpoints, never the one just written nor `keep` (the
    best checkpoint's name), which counts towards the limit unless the limit is 1 (then two stay, as in HF)."""
    from rlhf import engines

    final = Path(output_dir) / f"{PREFIX}{step}"
    tmp = Path(output_dir) / f".tmp-{PREFIX}{step}"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    for name, (model, optimizer) in trained.items():
        full = accelerator.get_state_dict(model)  # whole on the main rank under every engine
        if main:
            names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
            weights = {k: v.detach().contiguous().cpu().clone() for k, v in full.items() if k in names}
            save_file(weights, str(tmp / f"{name}.safetensors"))
        if engines.is_deepspeed(accelerator):
            model.save_checkpoint(str(tmp / "deepspeed" / name), tag="state", save_latest=False)
        elif accelerator.distributed_type.value == "FSDP":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_optimizer_state_dict(model, optimizer.optimizer, options=options)
            if main:
                torch.save(state, tmp / f"{name}_optimizer.pt")
        elif main:
            torch.save(optimizer.state_dict(), tmp / f"{name}_optimizer.pt")
    if main:
        for name, scheduler in schedulers.items():
            torch.save(scheduler.state_dict(), tmp / f"{name}_scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    accelerator.wait_for_everyone()
    if main:
        _fsync_files(tmp)  # make the bytes durable before the rename makes them visible
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if save_total_limit:
            _rotate(Path(output_dir), final, trainer_state.get("run_id"), save_total_limit, keep)
    accelerator.wait_for_everyone()
    return final


def _fsync_files(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())


def _rotate(
    output_dir: Path, final: Path, run_id: str | None, save_total_limit: int, keep: str | None
) -> None:
    """Remove this run's oldest checkpoints beyond save_total_limit: only this run's, never the one just written
    (another run's higher-numbered checkpoints once made a new run delete its own as it wrote them) nor `keep`."""
    mine = [
        c
        for c in list_checkpoints(output_dir)
        if c != final and c.name != keep and checkpoint_run_id(c) == run_id
    ]
    kept = 1 + (keep is not None and keep != final.name and (output_dir / keep).is_dir())
    for old in mine[: max(len(mine) + kept - save_total_limit, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    accelerator: Any, ckpt: Path, trained: dict[str, tuple[Any, Any]], schedulers: dict[str, Any]
) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote into the prepared models, optimizers and schedulers, and this rank's
    RNG states; returns trainer_state.json. Needs the engine and process count the checkpoint was written with."""
    from rlhf import engines

    state = json.loads((ckpt / "trainer_state.json").read_text())
    here = {"engine": engines.engine_name(accelerator), "world_size": accelerator.num_processes}
    there = {
        k: state.get(k, v if k == "engine" else None) for k, v in (("engine", "ddp"), ("world_size", None))
    }
    if there["world_size"] is not None and there != here:
        raise ValueError(
            f"{ckpt}: written under {there['engine']} with {there['world_size']} process(es), this run is "
            f"{here['engine']} with {here['world_size']}: resume with the same engine and process count (the "
            "model weights in its *.safetensors load anywhere)"
        )
    for name, (model, optimizer) in trained.items():
        weights = load_file(str(ckpt / f"{name}.safetensors"))
        if engines.is_deepspeed(accelerator):
            directory = ckpt / "deepspeed" / name
            _check_deepspeed_files(directory)
            path, _ = model.load_checkpoint(str(directory), tag="state", load_lr_scheduler_states=False)
            if path is None:
                raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint for {name}")
            continue
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.distributed_type.value == "FSDP":
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            expected = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
            if set(weights) != expected:
                raise ValueError(f"checkpoint {ckpt}/{name}: parameters do not match the model")
            options = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(model, weights, options=options)
            optim = safe_load(ckpt / f"{name}_optimizer.pt")
            set_optimizer_state_dict(
                model, optimizer.optimizer, optim, options=StateDictOptions(full_state_dict=True)
            )
        else:
            load_trainable_state_dict(unwrapped, weights, f"{ckpt}/{name}")
            optimizer.load_state_dict(safe_load(ckpt / f"{name}_optimizer.pt"))
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(safe_load(ckpt / f"{name}_scheduler.pt"))
    rng_file = ckpt / f"rng_state_{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(
            f"{rng_file}: the checkpoint was written by fewer processes than are running now"
        )
    set_rng_state(safe_load(rng_file))
    return state
