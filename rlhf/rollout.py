"""Generation and per-token log-probs.

Prompts are left-padded so every completion starts at the same column; the sequence fed to the model is
`[query_ids | response_ids]` with position ids counted over real tokens only. A completion's tokens run up to and
including its first EOS; everything after is padding (`response_mask` 0).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from classic.functional import entropy_from_logits, logprobs_from_logits
from rlhf.batch import Samples


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


# generation_config fields that add a logits processor to `model.generate`, with their neutral values. The lean
# sampler implements plain temperature sampling only, so a model whose config sets any of these falls back.
_NEUTRAL_GENERATION_FIELDS = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "typical_p": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "min_p": (None, 0.0),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "top_h": (None,),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "watermarking_config": (None,),
    "renormalize_logits": (None, False),
}


def lean_sampling_supported(
    model: torch.nn.Module, top_k: int, top_p: float, synced_gpus: bool = False
) -> bool:
    """True when `sample` reproduces `model.generate(do_sample=True, ...)`: no top-k / top-p filtering, no other
    logits processor in the model's generation config, a KV cache, one process per forward (no FSDP/ZeRO-3)."""
    if top_k or top_p < 1.0 or synced_gpus:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    if base.config.is_encoder_decoder or not getattr(base, "_supports_cache_class", True):
        return False
    config = getattr(base, "generation_config", None)
    return config is None or all(
        getattr(config, name, None) in neutral for name, neutral in _NEUTRAL_GENERATION_FIELDS.items()
    )


def _cdf_dtype(device: torch.device) -> torch.dtype:
    # float64: no drift over a 150k vocabulary (MPS has no float64; float32 there)
    return torch.float32 if device.type == "mps" else torch.float64


def draw_tokens(probs: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `probs` (batch, vocab) by inverse-CDF sampling: a single uniform number per row
    against the row's cumulative sum. Same distribution as `torch.multinomial(probs, 1)`, which draws one
    exponential number per vocabulary entry (64 x 8192 of them per decode step took as long as the model's
    forward on a 10M-parameter GPT-2). Tokens with probability 0 are never drawn: the search returns the first
    index whose cumulative sum is strictly above `u`, and `u` is strictly below the row total.

    uniform: the rows' U[0, 1) numbers (batch, 1), drawn here when None; `sample` draws them for the whole batch
    every step, so dropping finished rows does not shift the random stream of the others."""
    dtype = _cdf_dtype(probs.device)
    cdf = probs.to(dtype).cumsum(dim=-1)
    if uniform is None:
        uniform = torch.rand(probs.shape[0], 1, dtype=dtype, device=probs.device)
    u = uniform.to(dtype) * cdf[:, -1:]
    # the clamp only matters for a non-finite row (NaN logits), which `sample` reports after the loop
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


class _PreallocatedLayer(DynamicLayer):
    """A KV-cache layer that writes each step into buffers sized for the whole generation and hands attention a
    prefix view, instead of `DynamicLayer`'s `torch.cat` per step (a fresh multi-MB allocation per layer per
    token: on CPU that was 2-3x the decode step's matmul time)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device = key_states.device
            batch, heads, _, _ = key_states.shape
            self._key_buffer = key_states.new_empty(batch, heads, self.capacity, key_states.shape[-1])
            self._value_buffer = value_states.new_empty(batch, heads, self.capacity, value_states.shape[-1])
            self.is_initialized = True
        end = self.length + key_states.shape[-2]
        self._key_buffer[:, :, self.length : end] = key_states
        self._value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # rows of the buffers (a prompt's cache copied to each of its completions), not of the prefix views
        if self.is_initialized:
            self._key_buffer = self._key_buffer[indices]
            self._value_buffer = self._value_buffer[indices]
            self.keys = self._key_buffer[:, :, : self.length]
            self.values = self._value_buffer[:, :, : self.length]


def distinct_prompts(
    query_ids: torch.Tensor, query_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(distinct rows of [ids | mask], each row's index into them), or None when no prompt repeats. Rows are equal
    in ids *and* mask: with PAD == EOS, equal ids alone could differ in padding."""
    distinct, inverse = torch.unique(torch.cat([query_ids, query_mask.long()], 1), dim=0, return_inverse=True)
    return None if len(distinct) == len(query_ids) else (distinct, inverse)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | list[int],
    pad_token_id: int,
    share_prompts: bool = True,
    drop_finished: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature sampling with a KV cache: what `model.generate(do_sample=True)` does (float32 softmax at
    `temperature` (0 = greedy), stop when every row has ended) without its per-step machinery, with a
    preallocated cache and inverse-CDF draws (`draw_tokens`), returning the log-prob of each sampled token at
    `temperature`, so the rollout needs no separate forward pass for the behaviour policy's log-probs.

    share_prompts: a batch that repeats prompts (GRPO / RLOO groups) runs the prefill once per distinct prompt and
    copies its KV cache to the prompt's rows (the same numbers up to float rounding; most prefill work saved).
    drop_finished: once an eighth of the rows still decoding have emitted EOS, the finished ones leave the batch
    and its KV cache (one copy per drop) instead of being fed PAD to the end as `generate` does. The random
    numbers are drawn for the whole batch every step, so dropping rows does not change what the others sample.

    Returns (response_ids, logprobs), both (batch, response_len); response_len <= max_new_tokens (the loop stops
    when every row has emitted EOS, as `generate` does). Entries after a row's EOS are PAD and log-prob 0.
    """
    batch, prompt_len = query_ids.shape
    device = query_ids.device
    eos_ids = torch.tensor(eos_token_id, device=device).flatten()  # one id or a list of them
    # the whole attention mask up front; step t reads a prefix view instead of concatenating a new tensor
    attention_mask = torch.ones(batch, prompt_len + max_new_tokens, dtype=query_mask.dtype, device=device)
    attention_mask[:, :prompt_len] = query_mask
    position_ids = position_ids_from_mask(query_mask)  # (batch, prompt_len)
    kv_cache, cache = _preallocated_cache(model, prompt_len + max_new_tokens)
    plain_layers = all(isinstance(layer, DynamicLayer) for layer in kv_cache.layers)
    share_prompts = share_prompts and plain_layers
    logits = _prefill(model, query_ids, query_mask, position_ids, kv_cache, cache, share_prompts)
    response_ids = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, max_new_tokens, device=device)
    rows = torch.arange(batch, device=device)  # the batch rows still in the forward passes (and in the cache)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)  # over `rows`
    position_ids = position_ids[:, -1:]
    for t in range(max_new_tokens):
        next_ids, token_logprobs = _next_tokens(logits, temperature, batch, rows)
        next_ids = torch.where(unfinished, next_ids, pad_token_id)
        response_ids[rows, t] = next_ids
        # `where`, not a product: a finished row's -inf log-prob of PAD times 0 would be NaN
        chosen = token_logprobs.gather(1, next_ids[:, None]).squeeze(1)
        logprobs[rows, t] = torch.where(unfinished, chosen, 0.0)
        unfinished &= ~torch.isin(next_ids, eos_ids)
        finished = int((~unfinished).sum())  # the step's one device sync
        if t == max_new_tokens - 1 or finished == len(rows):
            break
        if drop_finished and plain_layers and finished * 8 >= len(rows):
            keep = unfinished.nonzero().squeeze(1)
            rows, next_ids, position_ids = rows[keep], next_ids[keep], position_ids[keep]
            attention_mask, unfinished = attention_mask[keep], unfinished[keep]
            kv_cache.batch_select_indices(keep)
        position_ids, step_mask = position_ids + 1, attention_mask[:, : prompt_len + t + 1]
        logits = _decode_chunk(model, next_ids[:, None], step_mask, position_ids, cache)
    return response_ids[:, : t + 1], _finite(logprobs[:, : t + 1])  # t + 1 tokens: the loop ends in a break


def _finite(logprobs: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(logprobs).all():  # one check per batch, not a device sync per token
        raise FloatingPointError(
            "the policy produced non-finite logits while sampling (NaN/inf weights or an overflow in "
            "bf16/fp16); the completions of this batch are not usable"
        )
    return logprobs


def _preallocated_cache(
    model: torch.nn.Module, capacity: int
) -> tuple[DynamicCache, dict[str, DynamicCache]]:
    """A KV cache whose plain full-attention layers hold preallocated buffers of `capacity` positions (sliding-window
    or linear-attention layers keep their own), and the keyword the model's forward takes it under."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    kv_cache = DynamicCache(config=base.config)
    kv_cache.layers = [
        _PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in kv_cache.layers
    ]
    return kv_cache, {cache_kwarg(base): kv_cache}


def _prefill(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    position_ids: torch.Tensor,
    kv_cache: DynamicCache,
    cache: dict[str, DynamicCache],
    share_prompts: bool,
) -> torch.Tensor:
    """The prompt pass: fills the KV cache and returns each row's last logits (batch, vocab). With share_prompts
    each distinct prompt runs once and its cache and logits are copied to its rows."""
    shared = distinct_prompts(query_ids, query_mask) if share_prompts else None
    distinct, inverse = shared or (None, None)
    if inverse is None:
        prefill_ids, prefill_mask, prefill_positions = query_ids, query_mask, position_ids
    else:
        prompt_len = query_ids.shape[1]
        prefill_ids, prefill_mask = distinct[:, :prompt_len], distinct[:, prompt_len:].to(query_mask.dtype)
        prefill_positions = position_ids_from_mask(prefill_mask)
    # only the last position's logits are needed (a full (batch, prompt_len, vocab) tensor is not)
    logits = model(
        input_ids=prefill_ids,
        attention_mask=prefill_mask,
        position_ids=prefill_positions,
        use_cache=True,
        logits_to_keep=1,
        **cache,
    ).logits[:, -1]
    if inverse is not None:  # each prompt's last logits and KV cache to each of its rows
        logits = logits[inverse]
        kv_cache.batch_select_indices(inverse)
    return logits


def _next_tokens(
    logits: torch.Tensor, temperature: float, batch: int, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step's tokens (rows,) and log-softmax (rows, vocab) at `temperature` (0: greedy, log-probs at
    temperature 1). The uniforms are drawn for the whole batch and indexed by `rows`, so rows that left the batch
    do not change what the others sample."""
    scores = logits.float()
    if temperature not in (0.0, 1.0):
        scores = scores / temperature
    token_logprobs = torch.log_softmax(scores, dim=-1)
    if temperature == 0:
        return scores.argmax(-1), token_logprobs
    uniform = torch.rand(batch, 1, dtype=_cdf_dtype(logits.device), device=logits.device)
    return draw_tokens(token_logprobs.exp(), uniform[rows]), token_logprobs


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_id: int | list[int],
    pad_token_id: int,
    synced_gpus: bool = False,
) -> Samples:
    """Sample completions for left-padded queries: the lean sampler (`sample`, which also returns the sampled
    tokens' log-probs) when it reproduces `model.generate`, else `model.generate` (top-k / top-p filtering or other
    logits processors; FSDP / ZeRO-3, where every rank must run the same number of forwards)."""
    sampled_logprobs = None
    if lean_sampling_supported(model, top_k, top_p, synced_gpus):
        response_ids, sampled_logprobs = sample(
            model, query_ids, query_mask, max_new_tokens, temperature, eos_token_id, pad_token_id
        )
    else:
        out = model.generate(
            input_ids=query_ids,
            attention_mask=query_mask,
            max_new_tokens=max_new_tokens,
            # temperature 0: greedy (evaluation), where sampling settings would only draw warnings
            **(
                {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
                if temperature > 0
                else {"do_sample": False}
            ),
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            synced_gpus=synced_gpus,
        )
        response_ids = out[:, query_ids.shape[1] :]  # (batch, response_len)
    response_mask = response_mask_from_ids(response_ids, eos_token_id)
    response_ids = torch.where(
        response_mask.bool(), response_ids, torch.full_like(response_ids, pad_token_id)
    )
    return Samples(query_ids, query_mask, response_ids, response_mask, sampled_logprobs)


class Generator:
    """Left-padded prompts in, `Samples` out: the generation stage of the RLHF step.

    The in-process generator samples from the live policy module (`sync_weights` just points it at the module,
    no copy). This is the seam for an external engine (vLLM, SGLang): such a generator must return the same
    `Samples` (masks from positions, `sampled_logprobs` only if it computes them at the sampling temperature
    with the trained weights) and, in `sync_weights`, make the engine sample from the policy's current weights;
    the trainer calls `sync_weights` after every update and before the first generation."""

    def __init__(
        self,
        max_new_tokens: int,
        temperature: float,
        eos_token_id: int | list[int],
        pad_token_id: int,
        top_k: int = 0,
        top_p: float = 1.0,
        synced_gpus: bool = False,
    ) -> None:
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.top_k, self.top_p = top_k, top_p
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.synced_gpus = synced_gpus
        self.model: torch.nn.Module | None = None

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def generate(self, query_ids: torch.Tensor, query_mask: torch.Tensor) -> Samples:
        if self.model is None:
            raise RuntimeError("Generator.generate before sync_weights: no policy to sample from")
        return generate(
            self.model,
            query_ids,
            query_mask,
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            self.top_p,
            self.eos_token_id,
            self.pad_token_id,
            synced_gpus=self.synced_gpus,
        )


def cache_kwarg(model: torch.nn.Module) -> str:
    """The name a transformers model's forward gives its KV cache: transformers 5.2x renamed `past_key_values` to
    `cache` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    inner = getattr(model, "module", model)  # DDP
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # peft
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def forward_logprobs(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    share_prompts: bool = True,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens under `model` at the sampling temperature (N+ detail), and optionally
    the per-token entropy (`entropy_grad=False`: for logging only, no autograd graph through the
    (batch, response_len, vocab) softmax). Returns (batch, response_len) tensors.

    share_prompts: rows that repeat a prompt (GRPO / RLOO groups) run the prompt once and its KV cache serves
    each row's response (`shared_prompt_logits`); gradients flow back through the shared prompt, summed over its
    rows, which is what the unshared computation gives.

    positions: (batch, response_len), nonzero where a log-prob is needed (an episode's action tokens); the LM
    head, log-softmax and entropy then run only at the positions some row needs (in a FrozenLake dialogue ~50 of
    ~600: the rest are observations), and both outputs are 0 elsewhere. None: every position."""
    response_len = response_ids.shape[1]
    keep = _needed_positions(positions, response_len)
    logits = (
        shared_prompt_logits(model, query_ids, query_mask, response_ids, response_mask, keep)
        if share_prompts
        else None
    )
    if logits is None:
        logits = _unshared_logits(model, query_ids, query_mask, response_ids, response_mask, keep)
    logits = logits.float()  # (batch, response_len or len(keep), vocab)
    if temperature != 1.0:
        logits = logits / temperature
    ids = response_ids if keep is None else response_ids[:, keep.to(response_ids.device)]
    # a few rows at a time, like the entropy below: logsumexp's (rows, response_len, vocab) temporaries stay small
    logprobs = torch.cat([logprobs_from_logits(x, i) for x, i in zip(logits.split(8), ids.split(8))])
    entropy = None
    if with_entropy and entropy_grad and torch.is_grad_enabled():
        entropy = entropy_from_logits(logits)
    elif with_entropy:
        with torch.no_grad():
            # a few rows at a time: the softmax temporaries of the whole (batch, response_len, vocab) tensor would
            # otherwise sit on top of the activations the backward pass still needs (peak memory)
            entropy = torch.cat([entropy_from_logits(rows) for rows in logits.split(8)])
    if keep is not None:
        logprobs = _scatter_positions(logprobs, keep, response_len)
        entropy = _scatter_positions(entropy, keep, response_len) if entropy is not None else None
    return logprobs, entropy


def _unshared_logits(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    keep: torch.Tensor | None,
) -> torch.Tensor:
    """The logits that predict the response tokens (all, or those at `keep`) from one pass over prompt + response."""
    response_len = response_ids.shape[1]
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    # the logit at position t predicts token t + 1: response token j is predicted at prompt_len - 1 + j, so the LM
    # head skips the prompt, and with `keep` every position no row needs (when the model supports `logits_to_keep`)
    at = (torch.arange(response_len) if keep is None else keep) + query_ids.shape[1] - 1
    accepts = _accepts_logits_to_keep(model)
    extra = (
        {"logits_to_keep": response_len + 1 if keep is None else at.to(input_ids.device)} if accepts else {}
    )
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **extra,
    ).logits
    if keep is None:  # a slice, not an index: no copy of the (batch, response_len, vocab) logits
        return logits[:, :-1] if accepts else logits[:, -response_len - 1 : -1]
    return logits if accepts else logits[:, at]


def _needed_positions(positions: torch.Tensor | None, response_len: int) -> torch.Tensor | None:
    """The sorted response positions any row of `positions` needs (a CPU index tensor), None when that is all of
    them (or none: a microbatch with nothing to train still runs its forward and backward, as every rank must)."""
    if positions is None:
        return None
    keep = positions.detach().bool().any(0).nonzero().squeeze(1).cpu()
    return None if len(keep) in (0, response_len) else keep


def _scatter_positions(values: torch.Tensor, keep: torch.Tensor, response_len: int) -> torch.Tensor:
    """(batch, len(keep)) values placed at their response positions of a (batch, response_len) zero tensor."""
    out = values.new_zeros(values.shape[0], response_len)
    return out.index_copy(1, keep.to(values.device), values)


def _inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / DeepSpeed (`.module`) and peft wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _checkpointing(inner: torch.nn.Module) -> bool:
    """Whether activation checkpointing is on (transformers 5.2x renamed is_gradient_checkpointing; the old name
    warns)."""
    new = hasattr(type(inner), "is_activation_checkpointing")
    return getattr(inner, "is_activation_checkpointing" if new else "is_gradient_checkpointing", False)


def shared_prompt_logits(
    model: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The response logits (batch, response_len, vocab) computed with each distinct prompt run once: a prefill
    over the distinct prompts fills a KV cache, each row takes its prompt's cache (and last logit, which predicts
    the first response token), then one pass over the responses alone. None when no prompt repeats, or when a
    cache cannot be used: activation checkpointing in training mode (transformers then turns the cache off), or
    cache layers other than plain full attention. keep: only the logits that predict these response positions
    (sorted, see `forward_logprobs`), (batch, len(keep), vocab)."""
    shared = distinct_prompts(query_ids, query_mask)
    if shared is None:
        return None
    distinct, inverse = shared
    inner = _inner_model(model)
    if inner.training and _checkpointing(inner):
        return None
    cache = DynamicCache(config=inner.config)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    kwarg = cache_kwarg(inner)
    prompt_len = query_ids.shape[1]
    prompt_mask = distinct[:, prompt_len:].to(query_mask.dtype)
    extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    first = model(
        input_ids=distinct[:, :prompt_len],
        attention_mask=prompt_mask,
        position_ids=position_ids_from_mask(prompt_mask),
        use_cache=True,
        **{kwarg: cache},
        **extra,
    ).logits[:, -1:]
    cache.batch_select_indices(inverse)  # indexing: the backward sums each prompt's gradient over its rows
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    # the response pass: its logit j predicts response token j + 1
    later = None if keep is None else keep[keep > 0] - 1
    accepts = later is not None and _accepts_logits_to_keep(model)
    rest = model(
        input_ids=response_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask)[:, prompt_len:],
        use_cache=True,
        **{kwarg: cache},
        **({"logits_to_keep": later.to(response_ids.device)} if accepts else {}),
    ).logits
    first = first[inverse]
    if keep is None:
        return torch.cat([first, rest[:, :-1]], dim=1)
    if not accepts:
        rest = rest[:, later]
    return torch.cat([first, rest] if keep[0] == 0 else [rest], dim=1)


def forward_values(
    critic: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    share_prompts: bool = False,
) -> torch.Tensor:
    """V(s_t) for each response token t: the critic's value at the position *before* the token is emitted.
    share_prompts: rows that repeat a prompt run it once, as in `forward_logprobs` (`shared_prompt_values`)."""
    shared = (
        shared_prompt_values(critic, query_ids, query_mask, response_ids, response_mask)
        if share_prompts
        else None
    )
    if shared is not None:
        return shared
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    values = critic(
        torch.cat([query_ids, response_ids], dim=1), attention_mask, position_ids_from_mask(attention_mask)
    )
    prompt_len = query_ids.shape[1]
    return values[:, prompt_len - 1 : -1]  # (batch, response_len)


def shared_prompt_values(
    critic: torch.nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor | None:
    """`forward_values` with each distinct prompt run once (`shared_prompt_logits` for the critic: the prompt's KV
    cache serves each of its rows, whose value before the first response token is the prompt's last value). None
    when no prompt repeats or a cache cannot be used (activation checkpointing in training mode, a critic that
    takes no cache)."""
    shared = distinct_prompts(query_ids, query_mask)
    inner = getattr(critic, "module", critic)  # DDP / DeepSpeed: call the wrapper, read the body's settings
    body = getattr(inner, "backbone", None)
    if shared is None or body is None or (body.training and _checkpointing(body)):
        return None
    cache = DynamicCache(config=body.config)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    distinct, inverse = shared
    prompt_len = query_ids.shape[1]
    prompt_mask = distinct[:, prompt_len:].to(query_mask.dtype)
    first = critic(distinct[:, :prompt_len], prompt_mask, position_ids_from_mask(prompt_mask), cache)[:, -1:]
    cache.batch_select_indices(inverse)  # indexing: the backward sums each prompt's gradient over its rows
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    rest = critic(response_ids, attention_mask, position_ids_from_mask(attention_mask)[:, prompt_len:], cache)
    return torch.cat([first[inverse], rest[:, :-1]], dim=1)


class DialogueCache:
    """A KV cache over a batch of dialogues that grow turn by turn (multi-turn episodes): each turn `extend`s every
    row with its new tokens (an observation) and `reply` samples a reply through the same cache, so a turn runs
    only its new tokens instead of re-reading the dialogue from the start.

    Rows have different lengths: a turn's new tokens are left-padded inside the sequence and a reply that ended
    early is followed by PAD; both carry attention mask 0 and position ids count real tokens only, so every row
    sees exactly its own dialogue (what one forward pass over it sees, up to float rounding). A reply's last token
    is fed with the next turn's tokens. The first `extend` runs each distinct prompt once (GRPO groups share it).
    `prefill_tokens` counts the real tokens run through `extend`; `reread_tokens` those a re-reading turn would
    have run (the benchmark's share of prefill avoided)."""

    def __init__(self, model: torch.nn.Module, pad_token_id: int) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.model, self.pad = model, pad_token_id
        self.kv = DynamicCache(config=base.config)
        self.cache = {cache_kwarg(base): self.kv}
        self.mask: torch.Tensor | None = None  # (rows, cached positions)
        self.next_position: torch.Tensor | None = None  # (rows,) position id of each row's next real token
        self.unfed: list[list[int]] = []  # each row's sampled tokens not yet in the cache
        self.prefill_tokens = self.reread_tokens = 0

    @staticmethod
    def supported(model: torch.nn.Module) -> bool:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=base.config).layers)

    def _forward(self, ids: torch.Tensor, chunk_mask: torch.Tensor, share: bool = False) -> torch.Tensor:
        positions = self.next_position[:, None] + torch.cumsum(chunk_mask, 1) - 1  # (rows, width)
        mask = chunk_mask if self.mask is None else torch.cat([self.mask, chunk_mask], 1)
        shared = distinct_prompts(ids, chunk_mask) if share else None
        if shared is None:
            logits = _decode_chunk(self.model, ids, mask, positions.clamp(min=0), self.cache)
        else:  # the first turn: each distinct prompt once, its cache copied to its rows
            distinct, inverse = shared
            width = ids.shape[1]
            d_mask = distinct[:, width:].to(chunk_mask.dtype)
            d_positions = (torch.cumsum(d_mask, 1) - 1).clamp(min=0)
            logits = _decode_chunk(self.model, distinct[:, :width], d_mask, d_positions, self.cache)[inverse]
            self.kv.batch_select_indices(inverse)
        self.mask, self.next_position = mask, self.next_position + chunk_mask.sum(1)
        return logits

    def extend(self, chunks: list[list[int]]) -> torch.Tensor:
        """Append each row's unfed reply token(s) and `chunks[row]`; returns the next-token logits (rows, vocab)."""
        rows = [fed + chunk for fed, chunk in zip(self.unfed or [[]] * len(chunks), chunks)]
        device = next(iter(self.model.parameters())).device
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows], device=device)
        chunk_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        first = self.mask is None
        if first:
            self.next_position = torch.zeros(len(rows), dtype=torch.long, device=device)
        self.reread_tokens += int(self.next_position.sum()) + sum(len(r) for r in rows)
        self.prefill_tokens += sum(len(r) for r in rows)
        self.unfed = [[] for _ in rows]
        return self._forward(ids, chunk_mask, share=first)

    def keep(self, rows: list[int]) -> None:
        """Only these rows go on (the others' episodes ended)."""
        index = torch.tensor(rows, device=self.mask.device)
        self.kv.batch_select_indices(index)
        self.mask, self.next_position = self.mask[index], self.next_position[index]
        self.unfed = [self.unfed[i] for i in rows]

    @torch.no_grad()
    def reply(
        self, logits: torch.Tensor, max_new_tokens: int, temperature: float, eos_token_id: int | list[int]
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Sample one reply per row (up to and including its EOS, at most max_new_tokens) from `logits` (the
        output of `extend`); returns each row's token ids and their log-probs at `temperature`."""
        batch, device = logits.shape[0], logits.device
        eos_ids = torch.tensor(eos_token_id, device=device).flatten()
        unfinished = torch.ones(batch, dtype=torch.bool, device=device)
        tokens, logprobs = [], []
        rows = torch.arange(batch, device=device)
        for t in range(max_new_tokens):
            next_ids, token_logprobs = _next_tokens(logits, temperature, batch, rows)
            next_ids = torch.where(unfinished, next_ids, self.pad)
            chosen = token_logprobs.gather(1, next_ids[:, None]).squeeze(1)
            tokens.append(next_ids)
            logprobs.append(torch.where(unfinished, chosen, 0.0))
            fed = unfinished.clone()  # this token belongs to the row's reply: fed (with mask 1) next
            unfinished &= ~torch.isin(next_ids, eos_ids)
            if t == max_new_tokens - 1 or not bool(unfinished.any()):
                break
            logits = self._forward(next_ids[:, None], fed.long()[:, None])
        ids, lps = torch.stack(tokens, 1), _finite(torch.stack(logprobs, 1))  # (rows, steps)
        out_ids, out_lps = [], []
        for row in range(batch):
            n = int(response_mask_from_ids(ids[row : row + 1], eos_token_id).sum())
            out_ids.append(ids[row, :n].tolist())
            out_lps.append(lps[row, :n].tolist())
            # a reply that ran to the last step has its last token outside the cache; an earlier EOS was fed
            self.unfed[row] = [out_ids[-1][-1]] if n == ids.shape[1] else []
        return out_ids, out_lps


def _decode_chunk(
    model: torch.nn.Module,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: dict[str, DynamicCache],
) -> torch.Tensor:
    """A forward of `ids` (rows, width) through the KV cache; the logits after each row's last token."""
    return model(
        input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **cache
    ).logits[:, -1]
