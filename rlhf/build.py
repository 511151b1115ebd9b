"""The trainer's setup, one function per part: policy and tokenizer, reference, rewards, critic, optimizers,
schedulers, the KL controller. Each takes the fields it uses; `PPOTrainer.__init__` calls them in order (the
order matters for seeded runs: LoRA's and a fresh critic head's initial weights are drawn from the global RNG).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhf.gguf import is_gguf, load_gguf_tokenizer
from rlhf.kl import AdaptiveKLController, FixedKLController
from rlhf.models import (
    build_critic,
    disable_dropout,
    enable_activation_checkpointing,
    ensure_pad_token,
    fuse_activations,
    load_policy,
)
from rlhf.rewards import RewardModel, RewardSet, build_reward_funcs, reward_names


def load_tokenizer(
    model: str | PreTrainedModel,
    policy: PreTrainedModel,
    processing_class: PreTrainedTokenizerBase | None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """The policy's tokenizer (given, or loaded from where the policy came from), with a PAD token and left
    padding (prompts are left-padded so completions start at one column), or an error when it has no EOS."""
    tokenizer = processing_class
    if tokenizer is None:
        source = model if isinstance(model, str) else policy.config._name_or_path
        tokenizer = (
            load_gguf_tokenizer(source)
            if is_gguf(source)
            else AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        )
    ensure_pad_token(tokenizer, policy)
    if tokenizer.eos_token_id is None:
        raise ValueError("processing_class: the tokenizer has no EOS token; completions could never end")
    tokenizer.padding_side = "left"
    return tokenizer


def build_policy(
    model: str | PreTrainedModel,
    processing_class: PreTrainedTokenizerBase | None,
    args: Any,
    peft_config: Any = None,
    ref_model: PreTrainedModel | None = None,
    needs_reference: bool = True,
) -> tuple[torch.nn.Module, PreTrainedModel | None, PreTrainedTokenizerBase]:
    """(policy, reference, tokenizer). Dropout off everywhere (N+ detail). The reference is a copy of the
    policy before LoRA, or None: with LoRA the reference is the policy with adapters off (no copy), and without
    a KL term there is none."""
    policy = load_policy(model, args.trust_remote_code, field="model")
    tokenizer = load_tokenizer(model, policy, processing_class, args.trust_remote_code)
    disable_dropout(policy)
    if args.fuse_activations:  # before the reference and critic copies are made, so they share it
        fuse_activations(policy)
    if ref_model is None and peft_config is None and needs_reference:
        ref_model = copy.deepcopy(policy)
    if peft_config is not None:
        from peft import get_peft_model

        policy = get_peft_model(policy, peft_config)
        disable_dropout(policy)  # LoRA's own dropout too: the update runs in training mode
    if args.gradient_checkpointing:
        enable_activation_checkpointing(policy)
        if peft_config is not None:
            policy.enable_input_require_grads()
    if ref_model is not None:
        disable_dropout(ref_model)
        if args.fuse_activations:
            fuse_activations(ref_model)
    return policy, ref_model, tokenizer


def build_rewards(
    reward_funcs: Any,
    tokenizer: PreTrainedTokenizerBase,
    reward_processing_classes: Any,
    args: Any,
) -> RewardSet:
    """The reward functions and models with their metric names and `reward_weights` (1 each by default)."""
    funcs = build_reward_funcs(
        reward_funcs, tokenizer, reward_processing_classes, args.trust_remote_code, args.fuse_activations
    )
    weights = args.reward_weights or [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(f"reward_weights has {len(weights)} entries for {len(funcs)} reward functions")
    return RewardSet(
        funcs,
        reward_names(funcs),
        torch.tensor(weights, dtype=torch.float32),
        args.missing_eos_penalty,
        args.reward_timeout,
    )


def build_value_model(
    args: Any,
    policy: torch.nn.Module,
    use_peft: bool,
    rewards: RewardSet,
    value_model: torch.nn.Module | None,
) -> torch.nn.Module:
    """The critic (`critic_init`: a copy of the reward model's body and head, of the policy's body with a fresh
    head, or the `value_model` given), a network separate from the policy."""
    reward_models = [f.model for f in rewards.funcs if isinstance(f, RewardModel)]
    return build_critic(
        args.critic_init,
        policy.get_base_model() if use_peft else policy,
        reward_models[0] if reward_models else None,
        value_model,
        args.gradient_checkpointing,
        args.fuse_activations,
    )


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    args: Any,
    optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """AdamW (eps `adam_eps`, `weight_decay`) over the trainable parameters, or the given class and kwargs."""
    opt_cls, opt_kwargs = optimizer_cls_and_kwargs or (
        torch.optim.AdamW,
        {"eps": args.adam_eps, "weight_decay": args.weight_decay},
    )
    return opt_cls([p for p in model.parameters() if p.requires_grad], lr=lr, **opt_kwargs)


def make_scheduler(
    opt: torch.optim.Optimizer, kind: str, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """`linear`: the learning rate decays to 0 over `total_steps` updates; else constant."""
    if kind == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def make_kl_controller(args: Any) -> AdaptiveKLController | FixedKLController:
    """Adaptive (Ziegler et al. 2019: init kl_coef, target kl_target, horizon kl_horizon) or fixed beta."""
    if args.adaptive_kl:
        return AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
    return FixedKLController(args.kl_coef)
