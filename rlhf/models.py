"""Loading the policy, reference and critic; the critic is a backbone with a scalar head read at every token."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.gguf import is_gguf, load_gguf
from rlhf.hub import load_model_config
from rlhf.rollout import cache_kwarg


def load_policy(
    source: str | PreTrainedModel, trust_remote_code: bool = False, field: str = "model"
) -> PreTrainedModel:
    if is_gguf(source):  # a llama.cpp file: de-quantised into an ordinary model (rlhf/gguf.py)
        return load_gguf(source, field=field)
    if isinstance(source, str):
        load_model_config(source, field=field, trust_remote_code=trust_remote_code)
        with explain_damaged_weights(source, field):
            return AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code)
    if not isinstance(source, nn.Module):
        raise TypeError(
            f"{field}: expected a Hub id, a local path or a causal LM, got {type(source).__name__}"
        )
    return source


def _damaged_safetensors(folder: Path) -> tuple[Path, str] | None:
    """The first `*.safetensors` file in `folder` whose header does not read or whose data does not fit in the
    file (safetensors checks both when opening), with the reason; None when all open."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # any failure to open the file is the damage to report
            return path, f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
    return None


@contextlib.contextmanager
def explain_damaged_weights(source: str, field: str) -> Iterator[None]:
    """Around `from_pretrained(source)`: if it fails and `source` is a local folder with a weight file that does
    not open (cut off by an interrupted copy or save), one line naming that file instead of safetensors' own
    error (`SafetensorError: ... incomplete metadata`), which names none. Other failures are left as they are."""
    try:
        yield
    except Exception as err:
        folder = Path(source).expanduser()
        damaged = _damaged_safetensors(folder) if folder.is_dir() else None
        if damaged is None:
            raise
        path, reason = damaged
        raise ValueError(
            f"{field}={source!r}: weight file '{path}' is truncated or corrupt ({path.stat().st_size} bytes; "
            f"{reason}); save or download the model again"
        ) from err


def disable_dropout(model: nn.Module) -> None:
    """N+ detail: dropout off in every model, so log-probs at rollout and update time agree. Covers
    `nn.Dropout` modules and the attention-probability dropout that Llama/Qwen-style layers keep as a float
    (`attention_dropout`, applied only in training mode, which the update runs in)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass instead of keeping them (non-reentrant, the
    variant that works with frozen inputs and LoRA). Only active while the model is in training mode."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def trainer_checkpointing_arg(on: bool) -> dict[str, bool]:
    """The `TrainingArguments` keyword that turns activation checkpointing on or off: transformers 5.2x renamed
    `gradient_checkpointing` to `activation_checkpointing` and warns on the old name; older versions know only it."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {
        "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on
    }


def fuse_activations(model: nn.Module) -> int:
    """Swap composed tanh-GELU modules (GPT-2's `gelu_new`, `gelu_fast`) for torch's one-kernel
    `gelu(approximate="tanh")`: the same function to float rounding (transformers documents them as equivalent),
    but one op that keeps one tensor for backward instead of seven elementwise ops keeping five (batch, seq,
    4 * hidden) tensors. On a 10M GPT-2 update that is about a third of the activation memory. The config is
    untouched, so a saved model loads with its original activation. Returns the number of modules swapped."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    swaps = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) in (NewGELUActivation, FastGELUActivation)
    ]
    for parent, name in swaps:
        setattr(parent, name, GELUTanh())
    return len(swaps)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """A PAD id for left-padding prompts and filling finished rows. No new token and no embedding resize: every
    mask is built from lengths and positions (a completion ends at its first EOS), never from PAD ids, so PAD may
    equal EOS, as Llama, Qwen and SmolLM tokenizers ship. A tokenizer without PAD uses EOS (TRL's convention)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("processing_class: the tokenizer has neither a PAD nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def backbone_of(model: PreTrainedModel) -> nn.Module:
    """The transformer body (no LM / classification head) of a Hugging Face model."""
    return getattr(model, model.base_model_prefix)


class Critic(nn.Module):
    """V(s_t) for every token: a transformer body and a linear head on its last hidden states."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_reward_model(cls, reward_model: PreTrainedModel) -> Critic:
        """N+ detail: the critic starts as a copy of the reward model (its head reads every position)."""
        rm = copy.deepcopy(reward_model)
        head = getattr(rm, "score", None) or getattr(rm, "classifier", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"critic_init='reward_model': {type(rm).__name__} has no linear `score` head; use critic_init='policy'"
            )
        return cls(backbone_of(rm), head).requires_grad_(True)

    @classmethod
    def from_policy(cls, policy: PreTrainedModel) -> Critic:
        """A copy of the policy's body with a fresh head of std 1/(hidden + 1) (OpenRLHF's value head): values
        start near 0, so the first advantages are the returns themselves. A reward model's 1/sqrt(hidden + 1)
        (the N+ detail) gives SmolLM2-135M values of std ~1 against returns of std ~0.2: explained variance -35
        at step 1 and advantages that were mostly the critic's noise."""
        body = copy.deepcopy(backbone_of(policy))
        hidden = policy.config.hidden_size
        head = nn.Linear(hidden, 1, bias=True)
        nn.init.normal_(head.weight, std=1 / (hidden + 1))
        nn.init.zeros_(head.bias)
        return cls(body, head.to(next(body.parameters()).dtype)).requires_grad_(True)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Values (batch, seq); `cache`: a KV cache the body reads and extends (a shared prompt run once,
        rlhf.rollout.forward_values), through this forward so that DDP / DeepSpeed wrappers see the call."""
        kv = {"use_cache": False} if cache is None else {"use_cache": True, cache_kwarg(self.backbone): cache}
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kv
        ).last_hidden_state  # (batch, seq, hidden)
        return self.head(hidden).squeeze(-1).float()  # (batch, seq)

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The body's transformer blocks: what FSDP2's transformer auto-wrap shards one by one."""
        return getattr(self.backbone, "_no_split_modules", None)

    def save(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """`critic.safetensors` (body + head; `state_dict` when gathered from a sharded engine) and the body's
        config.json, in `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()},
            str(directory / "critic.safetensors"),
        )
        if hasattr(self.backbone, "config"):
            self.backbone.config.save_pretrained(directory)

    def load(self, directory: str | Path) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(Path(directory) / "critic.safetensors")))


def build_critic(
    init: str,
    policy: PreTrainedModel,
    reward_model: PreTrainedModel | None = None,
    value_model: nn.Module | None = None,
    gradient_checkpointing: bool = False,
    fuse: bool = True,
) -> nn.Module:
    """The critic GAE needs: `value_model` when given; else a copy of the reward model (`init='reward_model'`,
    N+ detail) or of the policy's body with a fresh head (`'policy'`); 'auto' = the reward model if there is one.
    Dropout off, activation checkpointing and fused activations as for the policy."""
    if value_model is not None:
        critic = value_model
    else:
        if init == "auto":
            init = "reward_model" if reward_model is not None else "policy"
        if init == "reward_model":
            if reward_model is None:
                raise ValueError(
                    "critic_init='reward_model' needs a reward model in reward_funcs; use 'policy'"
                )
            critic = Critic.from_reward_model(reward_model)
        else:
            critic = Critic.from_policy(policy)
    disable_dropout(critic)
    if gradient_checkpointing:
        enable_activation_checkpointing(getattr(critic, "backbone", critic))
    if fuse:
        fuse_activations(critic)
    return critic


class AdaptersOff:
    """The LoRA policy with its adapters disabled, called like a model: the reference model of a LoRA run, which
    shares the base weights instead of holding a copy. `module` is the unwrapped peft model, so code that looks
    inside a model (`logits_to_keep`, the KV-cache type) sees the base model; calls go through the wrapped
    policy (DDP / FSDP2 / DeepSpeed)."""

    def __init__(self, policy: torch.nn.Module, unwrapped: torch.nn.Module) -> None:
        self.policy, self.module = policy, unwrapped

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.module.disable_adapter():
            return self.policy(*args, **kwargs)
