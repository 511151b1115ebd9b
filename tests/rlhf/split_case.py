"""One fixed optimizer step, cut into microbatches or split over processes: used by test_update.py (one process)
and ddp_worker.py (two). Everything is built from seeds, so every process builds the same batch and models."""

from __future__ import annotations

import copy
import dataclasses

import datasets
import torch

from classic import functional as F
from rlhf import PPOConfig, PPOTrainer
from rlhf.experience import Experience
from rlhf.rollout import forward_logprobs, forward_values
from rlhf.tiny import build_causal_lm, build_tokenizer

BATCH, PROMPT_LEN, T = 8, 3, 6
LENGTHS = [1, 6, 3, 2, 5, 4, 6, 1]  # completions of very different lengths: the normaliser matters
LR, BETA = 1.0, 0.1


def tokenizer():
    return build_tokenizer(
        ["the cat sat on the mat", "a dog ran in the park", "good good"] * 20, vocab_size=300
    )


def config(out, estimator: str, loss_type: str, micro: int, world: int = 1) -> PPOConfig:
    group = 2 if estimator == "grpo" else 1
    per_rank = BATCH // world
    return PPOConfig(
        output_dir=str(out),
        rollout_batch_size=per_rank // group,
        num_generations=group,
        mini_batch_size=per_rank,
        micro_batch_size=micro,
        num_ppo_epochs=1,
        max_new_tokens=T,
        learning_rate=LR,
        critic_learning_rate=LR,
        max_grad_norm=1e9,  # no clipping: it would hide a wrong gradient scale
        advantage_estimator=estimator,
        critic_init="policy",
        loss_type=loss_type,
        kl_coef=BETA,
        kl_in_loss=estimator == "grpo",
        kl_estimator="k3" if estimator == "grpo" else "k1",
        clip_eps=0.2,
        clip_eps_high=0.3,
        disable_tqdm=True,
        plot_metrics=False,
    )


def trainer(out, estimator: str, loss_type: str, micro: int, world: int = 1) -> PPOTrainer:
    tok = tokenizer()
    # plain SGD: the weight change is -lr * gradient, so a wrong scale shows (Adam's first step would hide it)
    return PPOTrainer(
        build_causal_lm(tok, seed=0),
        lambda prompts, completions, **kw: [0.0] * len(completions),
        config(out, estimator, loss_type, micro, world),
        datasets.Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(16)]}),
        processing_class=tok,
        optimizer_cls_and_kwargs=(torch.optim.SGD, {}),
    )


@torch.no_grad()
def experience(policy: torch.nn.Module, critic: torch.nn.Module | None) -> Experience:
    """The whole step's batch: random tokens, old log-probs near the current ones (some ratios clip), random
    advantages, returns and old values."""
    g = torch.Generator().manual_seed(1234)
    vocab = policy.config.vocab_size
    query_mask = torch.ones(BATCH, PROMPT_LEN)
    query_mask[::3, 0] = 0  # some left padding
    query_ids = torch.randint(3, vocab, (BATCH, PROMPT_LEN), generator=g)
    response_mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    response_ids = torch.randint(3, vocab, (BATCH, T), generator=g) * response_mask.long()
    inputs = (query_ids, query_mask, response_ids, response_mask)
    logprobs = forward_logprobs(policy, *inputs, 1.0)[0]
    values = forward_values(critic, *inputs) if critic is not None else None
    noise = lambda scale: scale * torch.randn(BATCH, T, generator=g)  # noqa: E731
    return Experience(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        loss_mask=response_mask,
        advantages=torch.randn(BATCH, T, generator=g) * response_mask,
        returns=torch.randn(BATCH, T, generator=g) * response_mask,
        scores=torch.randn(BATCH, generator=g),
        old_logprobs=(logprobs + noise(0.3)) * response_mask,
        ref_logprobs=(logprobs + noise(0.5)) * response_mask,
        old_values=None if values is None else (values + noise(0.3)) * response_mask,
        kl=torch.zeros(BATCH, T),
    )


def as_episodes(exp: Experience) -> Experience:
    """The same batch as multi-turn episodes: every third token of each row (but its last) is an observation
    token (action mask 0), so losses and their denominator count the other tokens only."""
    positions = torch.arange(T)[None, :]
    lengths = exp.response_mask.sum(1, keepdim=True)
    observation = (positions % 3 == 1) & (positions < lengths - 1)
    actions = exp.response_mask * (~observation).float()
    return dataclasses.replace(exp, loss_mask=actions, action_mask=actions)


def reference_step(policy, critic, exp: Experience, args: PPOConfig, per_microbatch_mean: bool = False):
    """The weight change one SGD step should make, written out from the loss formulas on the whole batch in one
    forward. `per_microbatch_mean=True` is the old, split-dependent normalisation (a token mean per microbatch of
    `args.micro_batch_size`, averaged): the test shows it differs, i.e. that the case can see the difference."""
    policy, critic = copy.deepcopy(policy), copy.deepcopy(critic)
    mask = exp.loss_mask

    def aggregate(per_token, rows=slice(None)):
        m, x = mask[rows], per_token[rows]
        if args.loss_type == "dapo":
            return (x * m).sum() / m.sum()
        if args.loss_type == "grpo":
            return ((x * m).sum(1) / m.sum(1)).mean()
        return (x * m).sum() / (m.shape[0] * args.max_new_tokens)  # dr_grpo

    def total(per_token):
        if not per_microbatch_mean:
            return aggregate(per_token)
        chunks = range(0, len(exp), args.micro_batch_size)
        return sum(aggregate(per_token, slice(i, i + args.micro_batch_size)) for i in chunks) / len(chunks)

    logprobs = forward_logprobs(policy, *exp.inputs, 1.0)[0]
    ratio = torch.exp(logprobs - exp.old_logprobs)
    clipped = torch.clamp(ratio, 1 - args.clip_eps, 1 + args.clip_eps_high)
    per_token = torch.maximum(-exp.advantages * ratio, -exp.advantages * clipped)
    if args.kl_in_loss:  # k3
        log_r = exp.ref_logprobs - logprobs
        per_token = per_token + args.kl_coef * (torch.exp(log_r) - log_r - 1)
    total(per_token).backward()
    deltas = {f"policy.{n}": -args.learning_rate * p.grad for n, p in policy.named_parameters()}
    if critic is not None:
        values = forward_values(critic, *exp.inputs)
        error = F.clipped_value_error(values, exp.old_values, exp.returns, args.value_clip_eps)[0]
        (args.vf_coef * total(error)).backward()
        deltas.update(
            {f"critic.{n}": -args.critic_learning_rate * p.grad for n, p in critic.named_parameters()}
        )
    return deltas


def weights(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    acc = trainer.accelerator
    out = {f"policy.{n}": p.detach().clone() for n, p in acc.unwrap_model(trainer.policy).named_parameters()}
    if trainer.critic is not None:
        out.update(
            {
                f"critic.{n}": p.detach().clone()
                for n, p in acc.unwrap_model(trainer.critic).named_parameters()
            }
        )
    return out
