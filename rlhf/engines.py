"""The distributed engine a run was launched with, and how each model is placed on it.

`accelerate launch --config_file recipes/accelerate/<engine>.yaml` picks the engine; the trainer never falls back
quietly to another one. Four are supported, on GPUs and (for tests and small runs) on CPUs with the gloo backend:

    ddp       one process, or data parallel: every rank holds every model
    fsdp      FSDP2 (`fully_shard`): parameters, gradients and optimizer states sharded over the ranks
    zero2     DeepSpeed ZeRO-2: optimizer states and gradients sharded, parameters replicated
    zero3     DeepSpeed ZeRO-3: parameters sharded too

Trained networks (the policy; the critic for gae) each get their own engine/optimizer, as in OpenRLHF: under
DeepSpeed `accelerate.backward` only drives the first engine it prepared, so `backward` and `optimizer_step`
below call each engine directly. Frozen networks (reference, reward models) are sharded for inference under FSDP2
and ZeRO-3, kept whole on every rank under DDP and ZeRO-2, or kept on the CPU with `ref_offload`.

accelerate on a machine without GPUs only joins processes into one group when built with cpu=True, and then
ignores a DeepSpeed or FSDP config (it would run as plain multi-CPU data parallel). `make_accelerator` makes the
requested engine run on CPU (DeepSpeed on gloo; FSDP2 through accelerate's FSDP code path on a gloo group) or
raises.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs


def has_accelerator() -> bool:
    probe = getattr(torch, "accelerator", None)
    if probe is not None and hasattr(probe, "is_available"):
        return bool(probe.is_available())
    return torch.cuda.is_available()


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested_engine() -> str:
    """What `accelerate launch` asked for: 'deepspeed', 'fsdp' or 'ddp' (plain data parallel or one process)."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _flag("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "ddp"


def make_accelerator(
    gradient_accumulation_steps: int,
    mixed_precision: str,
    log_with: list[str] | None,
    project_dir: str,
    timeout_s: float,
    micro_batch_size: int,
    max_grad_norm: float,
) -> Accelerator:
    """An Accelerator on the engine the launch asked for, with a process-group timeout of `timeout_s`."""
    engine = requested_engine()
    on_cpu = not has_accelerator()
    handler = InitProcessGroupKwargs(
        timeout=timedelta(seconds=timeout_s), backend="gloo" if on_cpu and engine == "deepspeed" else None
    )
    acc = Accelerator(
        # without cpu=True, accelerate treats processes started by `accelerate launch --multi_gpu` on a machine
        # with no accelerator as independent single-process runs; with it, it ignores DeepSpeed (built here on
        # gloo instead)
        cpu=on_cpu and engine != "deepspeed",
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=log_with,
        project_dir=project_dir,
        kwargs_handlers=[handler],
    )
    if engine == "fsdp" and on_cpu and acc.distributed_type == DistributedType.MULTI_CPU:
        # accelerate only turns FSDP on for GPU-like process groups; its FSDP2 code path itself runs on gloo
        from accelerate.state import PartialState
        from accelerate.utils import FullyShardedDataParallelPlugin

        # both shared states: AcceleratorState copies PartialState's type back whenever it is re-created
        PartialState().distributed_type = DistributedType.FSDP
        acc.state.distributed_type = DistributedType.FSDP
        acc.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    expected = {"deepspeed": DistributedType.DEEPSPEED, "fsdp": DistributedType.FSDP}.get(engine)
    if expected is not None and acc.distributed_type != expected:
        raise RuntimeError(
            f"the accelerate config asks for {engine} but accelerate set up {acc.distributed_type.value} "
            f"({acc.num_processes} process(es)); refusing to train on another engine than the one asked for"
        )
    if acc.distributed_type == DistributedType.FSDP and acc.state.fsdp_plugin.fsdp_version != 2:
        raise ValueError(
            "accelerate config: fsdp_version 1 is not supported; use FSDP2 (fsdp_version: 2, as in "
            "recipes/accelerate/fsdp2.yaml)"
        )
    if acc.distributed_type == DistributedType.DEEPSPEED:
        plugin = acc.state.deepspeed_plugin
        if plugin.zero3_init_flag:
            raise ValueError(
                "accelerate config: deepspeed_config.zero3_init_flag must be false (the reference model and the "
                "critic start as copies of fully loaded models)"
            )
        # the trainer's batch sizes and clipping are the source of truth, not the yaml's
        ds = plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = micro_batch_size
        ds["gradient_accumulation_steps"] = gradient_accumulation_steps
        ds["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * acc.num_processes
        ds["gradient_clipping"] = max_grad_norm
    return acc


def engine_name(acc: Accelerator) -> str:
    """ddp | fsdp | zero0..zero3 (for logs, checkpoints and errors)."""
    if acc.distributed_type == DistributedType.DEEPSPEED:
        return f"zero{acc.state.deepspeed_plugin.zero_stage}"
    if acc.distributed_type == DistributedType.FSDP:
        return "fsdp"
    return "ddp"


def is_deepspeed(acc: Accelerator) -> bool:
    return acc.distributed_type == DistributedType.DEEPSPEED


def shards_parameters(acc: Accelerator) -> bool:
    """True when no rank holds a whole model: FSDP2 and ZeRO-3."""
    return acc.distributed_type == DistributedType.FSDP or engine_name(acc) == "zero3"


@contextlib.contextmanager
def whole_models(acc: Accelerator) -> Iterator[None]:
    """Models loaded inside are whole, not ZeRO-3-partitioned at load time: accelerate registers its DeepSpeed
    config with transformers, whose from_pretrained then partitions every model it loads under ZeRO-3, and the
    trainer deep-copies the loaded policy (reference, critic) and resizes embeddings before preparing them."""
    if not is_deepspeed(acc):
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


# --- trained networks ------------------------------------------------------------------------------------------


def backward(acc: Accelerator, model: Any, loss: torch.Tensor) -> None:
    """Backward of one microbatch's loss for one trained network (its own engine under DeepSpeed)."""
    if is_deepspeed(acc):
        model.set_gradient_accumulation_boundary(is_boundary=acc.sync_gradients)
        model.backward(
            loss
        )  # DeepSpeed scales by 1/accumulation itself, as accelerate.backward does elsewhere
    else:
        acc.backward(loss)


def optimizer_step(acc: Accelerator, model: Any, optimizer: Any, max_grad_norm: float) -> torch.Tensor | None:
    """Clip, step and zero one trained network at an accumulation boundary; returns its gradient norm before
    clipping (the same on every rank). DeepSpeed clips with `gradient_clipping` (set to max_grad_norm)."""
    if is_deepspeed(acc):
        model.step()
        norm = model.get_global_grad_norm()
        return None if norm is None else torch.as_tensor(float(norm))
    norm = acc.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if norm is None:
        return None
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a replicated DTensor
    return torch.as_tensor(norm).detach().float().cpu()


@contextlib.contextmanager
def gathered_parameters(acc: Accelerator, model: Any) -> Iterator[torch.nn.Module]:
    """Every rank holds the whole prepared `model` inside the block (FSDP2 / ZeRO-3; a no-op elsewhere) and gets
    the plain module to call, so generation runs rank-local forward passes of any number, with the lean sampler.
    Costs one full copy of the weights per rank for the duration (as TRL's ds3_gather_for_generation). Under
    ZeRO-3 the engine's per-module fetch/release hooks are taken off meanwhile (they would still run on every
    decode step), and put back after."""
    module = acc.unwrap_model(model)
    if acc.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FSDPModule

        units = [m for m in module.modules() if isinstance(m, FSDPModule)]
        for m in units:
            m.unshard()
            m.set_reshard_after_forward(False)
        try:
            yield module
        finally:
            for m in units:
                m.reshard()
                m.set_reshard_after_forward(True)
    elif engine_name(acc) == "zero3":
        import deepspeed

        offload = getattr(model.optimizer, "parameter_offload", model.optimizer)
        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield module
            finally:
                offload._register_deepspeed_module(offload.module)
    else:
        yield module


# --- frozen networks ---------------------------------------------------------------------------------------------


def prepare_frozen(acc: Accelerator, model: torch.nn.Module, offload: bool = False) -> torch.nn.Module:
    """A model that only runs forward passes: sharded for inference under FSDP2 / ZeRO-3, a full copy on every
    rank otherwise, or on the CPU when `offload` (its forwards then run there)."""
    model = model.eval().requires_grad_(False)
    if offload:
        return model.to("cpu")
    if acc.distributed_type == DistributedType.FSDP:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(acc, model.to(acc.device))
    if engine_name(acc) == "zero3":
        import deepspeed

        config = copy.deepcopy(acc.state.deepspeed_plugin.deepspeed_config)
        for key in ("optimizer", "scheduler"):
            config.pop(key, None)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()  # (returns None, unlike nn.Module.eval)
        return engine
    return model.to(acc.device)


def module_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# --- hangs -------------------------------------------------------------------------------------------------------


class Watchdog:
    """Turns a rank that stalls into an error that names it, instead of a silent wait.

    `check_in(phase)` is a monitored barrier (on a gloo group: it works beside NCCL too) after rank-local work:
    rank 0 waits up to `timeout_s` for every rank and raises naming the ranks that did not arrive. `phase(name)`
    wraps a stage whose collectives may time out (`ddp_timeout`), re-raising the backend's error with this rank
    and the stage's name. One process: both do nothing."""

    def __init__(self, acc: Accelerator, timeout_s: float) -> None:
        self.rank, self.world = acc.process_index, acc.num_processes
        self.timeout = timedelta(seconds=timeout_s)
        self.group = None
        if self.world > 1:
            import torch.distributed as dist

            # a side group on gloo unless the default one already is (monitored_barrier is gloo-only)
            self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def _error(self, where: str, err: BaseException, waited: float) -> RuntimeError:
        """One line: the rank, what did not complete, how long it really waited (torch says 'in <ddp_timeout>
        ms' also when a peer died at once; that claim is dropped from its text), the backend's error."""
        timeout = self.timeout.total_seconds()
        if waited < 0.9 * timeout:
            how = (
                f"a rank failed after {waited:.1f} s, before ddp_timeout={timeout:g} s: it died or closed its "
                "connection"
            )
        else:
            how = (
                f"ddp_timeout={timeout:g} s, waited {waited:.1f} s; a rank that stalls, e.g. in a reward function "
                "that never returns, leaves the others waiting"
            )
            where += " in time"
        text = re.sub(r" in \d+ ?ms\b", "", str(err))
        return RuntimeError(f"rank {self.rank}/{self.world}: {where} ({how}): {text}")

    def check_in(self, phase: str) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        started = time.monotonic()
        try:
            dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)
        except RuntimeError as err:
            waited = time.monotonic() - started
            raise self._error(f"not every rank finished '{phase}'", err, waited) from err

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except RuntimeError as err:
            text = str(err).lower()
            if (
                self.world > 1
                and not text.startswith(f"rank {self.rank}/")
                and (
                    "timed out" in text
                    or "timeout" in text
                    or "connection closed" in text
                    or "connection reset" in text
                )
            ):
                waited = time.monotonic() - started
                raise self._error(f"a collective in '{name}' did not complete", err, waited) from err
            raise


def end_distributed(accelerator: Accelerator) -> None:
    """The end of a script, called after `del trainer`: release the prepared (DDP-wrapped) models first, then
    the process group. Under `accelerate launch --multi_gpu`, a process that exits with the group alive, or whose
    DDP reducer outlives its group, can abort at exit (code -6, "terminate called without an active
    exception"; seen in about 1 CPU run of 8)."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drops the accelerator's own references to models and optimizers
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
