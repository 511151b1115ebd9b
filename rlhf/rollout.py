"""Generation and per-token log-probs.

Prompts are left-padded so every completion starts at the same column; the sequence fed to the model is
`[query_ids | response_ids]` with position ids counted over real tokens only. A completion's tokens run up to and
including its first EOS; everything after is padding (`response_mask` 0).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import PreTrainedModel

from classic.functional import entropy_from_logits, logprobs_from_logits


@dataclass
class Rollout:
    """One batch of completions and everything the update needs. Shapes: (batch, prompt_len) for query_*,
    (batch, response_len) for the per-token tensors, (batch,) for scores."""

    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, idx: torch.Tensor) -> Rollout:
        """The rows `idx` of every tensor (a minibatch or microbatch)."""
        return Rollout(
            **{f.name: None if (v := getattr(self, f.name)) is None else v[idx] for f in fields(self)}
        )

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)


def response_mask_from_ids(response_ids: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after. (batch, response_len) -> same shape, float."""
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
    is_eos = torch.isin(response_ids, eos_ids.to(response_ids.device))
    # number of EOS strictly before position t; the first EOS itself is kept
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).float()


def ends_with_eos(
    response_ids: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int | list[int]
) -> torch.Tensor:
    eos_ids = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
    return (torch.isin(response_ids, eos_ids.to(response_ids.device)) & response_mask.bool()).any(dim=1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded prompt starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_id: int,
    pad_token_id: int,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample completions for left-padded queries. Returns a Rollout with response ids and mask."""
    out = model.generate(
        input_ids=query_ids,
        attention_mask=query_mask,
        do_sample=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        synced_gpus=synced_gpus,
    )
    response_ids = out[:, query_ids.shape[1] :]  # (batch, response_len)
    response_mask = response_mask_from_ids(response_ids, eos_token_id)
    response_ids = torch.where(
        response_mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id)
    )
    return Rollout(
        query_ids=query_ids, query_mask=query_mask, response_ids=response_ids, response_mask=response_mask
    )


def forward_logprobs(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under `model` at the sampling temperature (N+ detail), and optionally
    the per-token entropy. Returns (batch, response_len) tensors."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits
    prompt_len = query_ids.shape[1]
    # the logit at position t predicts token t + 1
    logits = logits[:, prompt_len - 1 : -1].float() / temperature  # (batch, response_len, vocab)
    logprobs = logprobs_from_logits(logits, response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logprobs, entropy


def forward_values(
    critic: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's value at the position *before* the token is emitted."""
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    values = critic(
        torch.cat([query_ids, response_ids], dim=1), attention_mask, position_ids_from_mask(attention_mask)
    )
    prompt_len = query_ids.shape[1]
    return values[:, prompt_len - 1 : -1]  # (batch, response_len)
