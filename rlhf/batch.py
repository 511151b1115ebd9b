"""The batch types of one RLHF step, in the order the stages produce them.

    Generator.generate        ─► Samples      prompts and completions (token ids and masks)
    RewardSet / score         ─► Scores       each reward function's raw score, the weighted total
    experience.annotate       ─► Annotations  behaviour / reference log-probs and old values (no gradients)
    experience.make_experience ─► Experience  advantages, returns and the loss mask: what the update trains on
    PPOTrainer.rollout        ─► Rollout      the Experience with the text and scores it came from

Shapes: B = rows (completions) in the batch, P = prompt length (left-padded), T = response length (right-padded
after each completion's first EOS). Masks are 1 on real tokens and 0 on padding; they come from lengths and
positions, never from PAD ids (PAD may equal EOS).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def select_rows(obj: T, idx: torch.Tensor | slice) -> T:
    """The rows `idx` of every tensor field of a dataclass of batch tensors (a minibatch or microbatch);
    non-tensor fields and None are kept as they are."""
    return dataclasses.replace(
        obj,
        **{
            f.name: v[idx]
            for f in dataclasses.fields(obj)
            if isinstance(v := getattr(obj, f.name), torch.Tensor) and v.dim() > 0
        },
    )


def fold_turns(x: torch.Tensor, rows_per_episode: int) -> torch.Tensor:
    """(E * K, T) one row per turn (a history window: rlhf/episodes.py, K rows per episode in order) ->
    (E, K * T) one row per episode, its turns side by side: an episode's replies in order with the padding
    between them where a whole dialogue has its observations (masks 0 there). The identity for K = 1."""
    return x if rows_per_episode == 1 else x.reshape(x.shape[0] // rows_per_episode, -1)


@dataclass(frozen=True)
class Samples:
    """What a `Generator` returns: left-padded prompts and their completions. A completion's tokens run up to and
    including its first EOS; response_mask is 1 there and 0 after."""

    query_ids: torch.Tensor  # (B, P) prompt token ids, left-padded
    query_mask: torch.Tensor  # (B, P) 1 on prompt tokens, 0 on left padding
    response_ids: torch.Tensor  # (B, T) sampled token ids, PAD after the first EOS
    response_mask: torch.Tensor  # (B, T) 1 up to and including the first EOS
    # (B, T) log-prob of each sampled token under the sampling policy at the sampling temperature, when the sampler
    # computed them on the way (ours does; `model.generate` does not): None otherwise
    sampled_logprobs: torch.Tensor | None = None
    # multi-turn episodes (rlhf/episodes.py), None for single-turn completions. The response is then
    # [reply_1 | obs_1 | reply_2 | ... | reply_K]: response_mask 1 on all of it, action_mask 1 on the sampled reply
    # tokens only (observation and chat-template tokens are 0), turn_ends 1 on each reply's last token and
    # env_rewards the env's reward for that turn there (0 elsewhere). All (B, T). turn_states (int64) holds, on
    # each reply's last token, an id of the observation the reply answered (`episodes.state_id`; 0 elsewhere):
    # replies with the same id were made in the same state (GiGPO's step groups).
    action_mask: torch.Tensor | None = None
    turn_ends: torch.Tensor | None = None
    env_rewards: torch.Tensor | None = None
    turn_states: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def actions(self) -> torch.Tensor:
        """(B, T) 1 on the tokens the policy sampled: action_mask for episodes, else response_mask."""
        return self.response_mask if self.action_mask is None else self.action_mask

    def select(self, idx: torch.Tensor | slice) -> Samples:
        return select_rows(self, idx)

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query_ids, query_mask, response_ids, response_mask): the arguments of forward_logprobs/values."""
        return self.query_ids, self.query_mask, self.response_ids, self.response_mask


@dataclass(frozen=True)
class Scores:
    """What the score stage returns."""

    raw: torch.Tensor  # (num_funcs, B) each reward function's own output
    total: torch.Tensor  # (B,) the weighted sum the estimator sees, the EOS penalty applied
    ended_with_eos: torch.Tensor  # (B,) bool: the completion emitted EOS within max_new_tokens


@dataclass(frozen=True)
class Annotations:
    """Per-token tensors computed without gradients before the update.

    old_logprobs None means: the update runs exactly once over these samples, so the policy the update starts
    from *is* the behaviour policy, and the update's own first forward gives its log-probs (a pass saved)."""

    old_logprobs: torch.Tensor | None  # (B, T) behaviour policy log-probs at the sampling temperature
    ref_logprobs: torch.Tensor | None  # (B, T) reference model log-probs (None without a KL term)
    values: torch.Tensor | None  # (B, T) critic values V(s_t) before each token (None without a critic)


@dataclass(frozen=True)
class Experience:
    """The frozen batch one update trains on."""

    query_ids: torch.Tensor  # (B, P)
    query_mask: torch.Tensor  # (B, P)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) real tokens after the prompt (what the forward passes attend to)
    # (B, T) the tokens the policy sampled, with completions excluded from every loss (mask_truncated_completions)
    # zeroed: the loss and every token statistic (KL, entropy, clipping) count these tokens only
    loss_mask: torch.Tensor
    advantages: torch.Tensor  # (B, T)
    returns: torch.Tensor  # (B, T) value targets (gae) or reward-to-go
    scores: torch.Tensor  # (B,) Scores.total
    old_logprobs: torch.Tensor | None = None  # (B, T) see Annotations
    ref_logprobs: torch.Tensor | None = None  # (B, T)
    old_values: torch.Tensor | None = None  # (B, T)
    # (B, T) per-token KL estimate (old vs reference) when both are known before the update, else None
    kl: torch.Tensor | None = None
    # (B, T) the policy's sampled tokens (Samples.actions): response_mask for single-turn completions
    action_mask: torch.Tensor | None = None
    # (B, T) importance weights of the policy loss for a generation engine's samples (rlhf/offpolicy.py), None = 1
    is_weights: torch.Tensor | None = None

    @property
    def actions(self) -> torch.Tensor:
        return self.response_mask if self.action_mask is None else self.action_mask

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, idx: torch.Tensor | slice) -> Experience:
        return select_rows(self, idx)

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.query_ids, self.query_mask, self.response_ids, self.response_mask


@dataclass(frozen=True)
class Rollout:
    """One step's rollout on this rank: the Experience and what it was made from (for logs and metrics)."""

    experience: Experience
    scores: Scores
    prompts: list[Any]  # B prompts as given (text or chat messages), each repeated num_generations times
    completions: list[str]  # B decoded completions (episodes: the whole dialogue after the prompt)
    stats: dict[str, float | None] = field(default_factory=dict)  # rollout metrics and timings of this rank
    # episodes: one dict per row for completions.jsonl (each turn's reply, observation and reward; return, success)
    extras: list[dict[str, Any]] | None = None
