"""Multi-turn episodes: a language model plays a text env (a gymnasium env whose observations and actions are
strings, e.g. rlhf/envs) for up to `max_turns` replies, and the episodes become one batch of `Samples`.

    env.reset(seed) ─► [prompt | reply_1 | obs_1 | reply_2 | obs_2 | ... | reply_K]
                         query   action    0       action    0             action     (action_mask)

Token in, token out: the ids the policy sampled are kept exactly as sampled (never decoded and re-tokenised); the
decoded text only goes to the env. Observations and the chat template's turn markers are appended as ids
(`ChatFormat`). All episodes of the batch step together: each turn samples one reply for every episode still
running (one batched `Generator.generate` over the left-padded dialogues; episodes that ended leave the batch).
Each turn re-reads its dialogue from the start (our sampler shares the prefill of identical prompts, so a group's
first turn runs once); the env reward of a turn sits on the last token of that turn's reply.

This module does not import gymnasium: any object with gymnasium's reset/step works.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from rlhf.batch import Samples, Scores
from rlhf.prompts import left_pad
from rlhf.rollout import DialogueCache, Generator, lean_sampling_supported

_REPLY = "\x00reply\x00"  # a probe that no chat template produces on its own


class ChatFormat:
    """How a dialogue becomes token ids: the prompt (system prompt and first observation, then the start of the
    assistant's turn) and, after each reply, the ids that close the reply's turn, hold the next observation as a
    user turn and open the next assistant turn. With a chat template these are read off the template itself;
    without one, plain text ("system\\n\\nobservation\\n" and "\\nobservation\\n")."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.eos_text = tokenizer.decode([tokenizer.eos_token_id])

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _messages(self, system: str, obs: str) -> list[dict[str, str]]:
        return ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": obs}
        ]

    def prompt_ids(self, system: str, obs: str) -> list[int]:
        if self.tokenizer.chat_template is None:
            return self._ids(f"{system}\n\n{obs}\n" if system else f"{obs}\n")
        text = self.tokenizer.apply_chat_template(
            self._messages(system, obs), tokenize=False, add_generation_prompt=True
        )
        return self._ids(text)

    def observation_ids(self, system: str, obs: str, reply_ended: bool) -> list[int]:
        """The ids after a reply (which ended with EOS or not) up to the start of the next reply."""
        if self.tokenizer.chat_template is None:
            return self._ids(("" if reply_ended else self.eos_text) + f"\n{obs}\n")
        first = self._messages(system, "first observation")
        before = self.tokenizer.apply_chat_template(
            [*first, {"role": "assistant", "content": _REPLY}], tokenize=False
        )
        after = self.tokenizer.apply_chat_template(
            [*first, {"role": "assistant", "content": _REPLY}, {"role": "user", "content": obs}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if not after.startswith(before):
            raise ValueError(
                "the tokenizer's chat template rewrites earlier turns; multi-turn episodes need one that appends"
            )
        closing = before[before.rindex(_REPLY) + len(_REPLY) :]  # what the template puts after a reply
        if reply_ended and closing.startswith(self.eos_text):  # the sampled EOS already closed it
            closing = closing[len(self.eos_text) :]
        return self._ids(closing + after[len(before) :])


@dataclass
class Episode:
    """One episode's token ids and what happened, filled turn by turn."""

    env: Any
    seed: int
    prompt: list[int]
    response: list[int] = field(default_factory=list)  # replies and observations after the prompt
    actions: list[int] = field(default_factory=list)  # 1 on sampled tokens
    turn_ends: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # the env reward on each turn's last token, else 0
    states: list[int] = field(default_factory=list)  # the id of the observation replied to, there, else 0
    logprobs: list[float] = field(default_factory=list)  # the sampler's, 0 on observations
    turns: list[dict[str, Any]] = field(default_factory=list)  # reply, reward, observation per turn
    pending: list[int] = field(
        default_factory=list
    )  # the next observation's ids, added before the next reply
    system: str = ""  # the env's system prompt (the chat template may repeat it)
    # with a history window (`history_turns`): the observations' text (the reset's, then each turn's), each
    # reply's ids and the ids that followed it, and each turn's query (what its reply was sampled from)
    observations: list[str] = field(default_factory=list)
    replies: list[list[int]] = field(default_factory=list)
    afters: list[list[int]] = field(default_factory=list)
    queries: list[list[int]] = field(default_factory=list)
    done: bool = False
    success: bool = False
    invalid: int = 0
    all_ended: bool = True  # every reply ended with EOS

    def add(self, ids: list[int], action: bool, logprobs: list[float] | None = None) -> None:
        self.response += ids
        self.actions += [int(action)] * len(ids)
        self.turn_ends += [0] * len(ids)
        self.rewards += [0.0] * len(ids)
        self.states += [0] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


def state_id(observation: str) -> int:
    """A nonzero id of an observation's text, the same in every process and run (a 62-bit BLAKE2 hash): replies
    to equal observations share it (GiGPO's anchor states)."""
    digest = hashlib.blake2b(observation.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 2) or 1


def env_label(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__


@dataclass
class EpisodeBatch:
    """`run_episodes`' result: the Samples (with action_mask, turn_ends, env_rewards) and per-episode numbers."""

    samples: Samples
    returns: torch.Tensor  # (B,) sum of the env's rewards
    ended_with_eos: torch.Tensor  # (B,) bool: every reply ended with the end-of-turn token
    stats: dict[str, float]  # this rank's episode metrics (episode_return, success_rate, ...)
    dialogues: list[dict[str, Any]]  # per episode: seed, turns (reply, reward, observation), return, success
    completions: list[str] = field(default_factory=list)  # per episode: the decoded dialogue after the prompt


def _start(env: Any, seed: int, fmt: ChatFormat, max_length: int, max_new_tokens: int) -> Episode:
    try:
        obs, info = env.reset(seed=seed)
    except Exception as err:
        raise RuntimeError(
            f"{env_label(env)} (seed {seed}): reset raised {type(err).__name__}: {' '.join(str(err).split())}"
        ) from err
    prompt = fmt.prompt_ids(info.get("system_prompt", ""), obs)
    if len(prompt) + max_new_tokens > max_length:
        raise ValueError(
            f"{env_label(env)} (seed {seed}, turn 1): the first observation is {len(prompt)} tokens; with "
            f"max_new_tokens={max_new_tokens} it exceeds the context window ({max_length} positions)"
        )
    return Episode(env, seed, prompt, system=info.get("system_prompt", ""), observations=[obs])


def _step(episode: Episode, ids: list[int], logprobs: list[float], eos: int, fmt: ChatFormat) -> None:
    """One reply into the episode: its ids as sampled, the env's step on its text, the next observation pending."""
    reply = fmt.tokenizer.decode(ids, skip_special_tokens=True)
    episode.add(ids, action=True, logprobs=logprobs)
    ended = ids[-1] == eos
    episode.all_ended &= ended
    turn = len(episode.turns) + 1
    try:
        obs, reward, terminated, truncated, info = episode.env.step(reply)
    except Exception as err:
        raise RuntimeError(
            f"{env_label(episode.env)} (seed {episode.seed}, turn {turn}): step raised {type(err).__name__}: "
            f"{' '.join(str(err).split())}"
        ) from err
    episode.turn_ends[-1], episode.rewards[-1] = 1, float(reward)
    episode.states[-1] = state_id(episode.observations[-1])  # the observation this reply answered
    invalid = bool(info.get("invalid_action", False))
    episode.invalid += invalid
    episode.success = bool(info.get("success", episode.success))
    episode.turns.append({"reply": reply, "reward": float(reward), "invalid": invalid, "observation": obs})
    episode.done = bool(terminated or truncated)
    if not episode.done:
        episode.pending = fmt.observation_ids(episode.system, obs, ended)
    episode.replies.append(list(ids))
    episode.afters.append(episode.pending)
    episode.observations.append(obs)


def window_query(episode: Episode, history_turns: int, fmt: ChatFormat) -> list[int]:
    """The ids the next reply is sampled from with a history window: the chat of the system prompt and the
    observation `history_turns` turns back, then each later reply and observation as in the whole dialogue (the
    same ids), ending where the next reply starts. history_turns 0: the system prompt and the current
    observation; a window reaching the first turn: the whole dialogue."""
    turn = len(episode.replies)
    start = max(0, turn - history_turns)
    ids = fmt.prompt_ids(episode.system, episode.observations[start])
    for reply, after in zip(episode.replies[start:], episode.afters[start:]):
        ids = ids + reply + after
    return ids


def run_episodes(
    generator: Generator,
    tokenizer: PreTrainedTokenizerBase,
    envs: list[Any],
    seeds: list[int],
    max_turns: int,
    max_length: int,
    device: torch.device | str = "cpu",
    history_turns: int | None = None,
) -> EpisodeBatch:
    """Play one episode per env (reset with its seed) for up to `max_turns` replies, all episodes stepping
    together. An episode whose next turn would not fit the context window (`max_length` positions, with a whole
    reply of generator.max_new_tokens) ends there (truncated). The generator samples from the policy it was last
    synced to (temperature 0: greedy). Our sampler keeps one KV cache over the turns (`rollout.DialogueCache`);
    another generator (filtering, an external engine) re-reads each dialogue.

    history_turns None: one row per episode. A number k: each reply reads `window_query` (the last k turns) and
    the Samples hold `max_turns` rows per episode, one per turn (`_turn_rows`)."""
    fmt = ChatFormat(tokenizer)
    episodes = [
        _start(env, seed, fmt, max_length, generator.max_new_tokens) for env, seed in zip(envs, seeds)
    ]
    cache = _dialogue_cache(generator, tokenizer.pad_token_id) if history_turns is None else None
    active = list(range(len(episodes)))
    for _ in range(max_turns):
        if history_turns is not None:  # the window: what the reply reads, what must fit the context window
            for e in (episodes[i] for i in active if not episodes[i].done):
                e.queries.append(window_query(e, history_turns, fmt))
        going = [i for i in active if not _ends(episodes[i], generator.max_new_tokens, max_length)]
        if not going:
            break
        chunks = [episodes[i].pending if episodes[i].response else episodes[i].prompt for i in going]
        for i in going:
            episodes[i].add(episodes[i].pending, action=False)
            episodes[i].pending = []
        if cache is not None:
            if going != active:
                cache.keep([active.index(i) for i in going])
            logits = cache.extend(chunks)
            replies, logprobs = cache.reply(
                logits, generator.max_new_tokens, generator.temperature, tokenizer.eos_token_id
            )
        else:  # each dialogue (or window) read from its start
            contexts = [
                e.queries[-1] if e.queries else e.prompt + e.response for e in (episodes[i] for i in going)
            ]
            replies, logprobs = _sample(generator, contexts, tokenizer.pad_token_id, device)
        for i, ids, lps in zip(going, replies, logprobs or [None] * len(going)):
            _step(episodes[i], ids, lps, tokenizer.eos_token_id, fmt)
        active = going
    batch = _to_batch(episodes, tokenizer.pad_token_id, device, logprobs is not None)
    batch.completions = tokenizer.batch_decode([e.response for e in episodes], skip_special_tokens=True)
    if history_turns is not None:
        batch.samples = _turn_rows(episodes, max_turns, tokenizer.pad_token_id, device, logprobs is not None)
    if cache is not None:
        batch.stats["prefill_tokens"] = float(cache.prefill_tokens)
        batch.stats["prefill_avoided_fraction"] = 1.0 - cache.prefill_tokens / max(cache.reread_tokens, 1)
    return batch


def _ends(episode: Episode, max_new_tokens: int, max_length: int) -> bool:
    """The episode is over, or its next observation and a whole reply would not fit the context window (with a
    history window: its next query)."""
    context = (
        len(episode.queries[-1])
        if episode.queries
        else len(episode.prompt) + len(episode.response) + len(episode.pending)
    )
    room = context + max_new_tokens <= max_length
    episode.done = episode.done or not room
    return episode.done


def _dialogue_cache(generator: Generator, pad: int) -> DialogueCache | None:
    """Our sampler's KV cache over the turns, where it reproduces sampling (no top-k / top-p, plain layers)."""
    model = getattr(generator, "model", None)
    if not isinstance(generator, Generator) or model is None or generator.synced_gpus:
        return None
    if not (
        lean_sampling_supported(model, generator.top_k, generator.top_p) and DialogueCache.supported(model)
    ):
        return None
    return DialogueCache(model, pad)


def _sample(
    generator: Any, contexts: list[list[int]], pad: int, device: torch.device | str
) -> tuple[list[list[int]], list[list[float]] | None]:
    """One reply per context from the generator, each read from its start (a whole dialogue, or a window)."""
    samples = generator.generate(*left_pad(contexts, pad, device))
    lengths = samples.response_mask.sum(1).long().tolist()
    replies = [samples.response_ids[row, :n].tolist() for row, n in enumerate(lengths)]
    if samples.sampled_logprobs is None:
        return replies, None
    return replies, [samples.sampled_logprobs[row, :n].tolist() for row, n in enumerate(lengths)]


def _right_pad(
    rows: list[list], width: int, fill: float, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """(len(rows), width): each row followed by `fill`."""
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=dtype, device=device)


def _to_batch(
    episodes: list[Episode], pad: int, device: torch.device | str, with_logprobs: bool
) -> EpisodeBatch:
    query_ids, query_mask = left_pad([e.prompt for e in episodes], pad, device)
    width = max(len(e.response) for e in episodes)

    def right(rows: list[list], fill: float, dtype: torch.dtype) -> torch.Tensor:
        return _right_pad(rows, width, fill, dtype, device)

    response_ids = right([e.response for e in episodes], pad, torch.long)
    response_mask = right([[1] * len(e.response) for e in episodes], 0, torch.float32)
    samples = Samples(
        query_ids,
        query_mask,
        response_ids,
        response_mask,
        right([e.logprobs for e in episodes], 0.0, torch.float32) if with_logprobs else None,
        action_mask=right([e.actions for e in episodes], 0, torch.float32),
        turn_ends=right([e.turn_ends for e in episodes], 0, torch.float32),
        env_rewards=right([e.rewards for e in episodes], 0.0, torch.float32),
        turn_states=right([e.states for e in episodes], 0, torch.long),
    )
    returns = torch.tensor([sum(e.rewards) for e in episodes], device=device)
    turns = torch.tensor([float(len(e.turns)) for e in episodes])
    tokens = torch.tensor([float(sum(e.actions)) for e in episodes])
    stats = {
        "episode_return": returns.mean().item(),
        "episode_turns": turns.mean().item(),
        "success_rate": sum(e.success for e in episodes) / len(episodes),
        "invalid_action_fraction": sum(e.invalid for e in episodes) / max(turns.sum().item(), 1.0),
        "tokens_per_turn": tokens.sum().item() / max(turns.sum().item(), 1.0),
    }
    dialogues = [
        {
            "seed": e.seed,
            "turns": e.turns,
            "return": sum(e.rewards),
            "success": e.success,
            "tokens": sum(e.actions),
        }
        for e in episodes
    ]
    ended = torch.tensor([e.all_ended for e in episodes], device=device)
    return EpisodeBatch(samples, returns, ended, stats, dialogues)


def _turn_rows(
    episodes: list[Episode], max_turns: int, pad: int, device: torch.device | str, with_logprobs: bool
) -> Samples:
    """With a history window, one row per turn: its query and its reply (action_mask 1 on the reply, turn_ends 1
    and the turn's reward on its last token). Every episode has `max_turns` rows, in order, so that row
    e * max_turns + t is turn t of episode e and `fold_turns` puts an episode's replies back in one row; a turn
    that was never played is a row with nothing to train (masks 0).

    The ids every query starts with (the system prompt, ~190 of ~220 tokens on the FrozenLake recipe) are each
    row's prompt and the rest of its query opens its response (response_mask 1, action_mask 0, like an
    observation in a dialogue): the forward passes then run that prompt once per microbatch and read it from the
    KV cache (`shared_prompt_logits`, `shared_prompt_values`), the same numbers as each row read whole."""
    played = [q for e in episodes for q in e.queries[: len(e.replies)]]
    cut = _common_prefix_length(played)
    rows = [_turn_row(e, t, cut, played[0][:cut]) for e in episodes for t in range(max_turns)]
    queries, responses, actions, logprobs, rewards = (list(x) for x in zip(*rows))
    states = [
        state_id(e.observations[t]) if t < len(e.replies) else 0 for e in episodes for t in range(max_turns)
    ]
    query_ids, query_mask = left_pad(queries, pad, device)
    width = max(1, *(len(r) for r in responses))

    def right(rows: list[list], fill: float, dtype: torch.dtype) -> torch.Tensor:
        return _right_pad(rows, width, fill, dtype, device)

    ends = right([[0] * (len(r) - 1) + [int(any(a))] for r, a in zip(responses, actions)], 0, torch.float32)
    return Samples(
        query_ids,
        query_mask,
        right(responses, pad, torch.long),
        right([[1] * len(r) for r in responses], 0, torch.float32),
        right(logprobs, 0.0, torch.float32) if with_logprobs else None,
        action_mask=right(actions, 0, torch.float32),
        turn_ends=ends,
        env_rewards=ends * torch.tensor(rewards, device=device)[:, None],
        turn_states=ends.long() * torch.tensor(states, device=device)[:, None],
    )


def _turn_row(
    e: Episode, t: int, cut: int, shared: list[int]
) -> tuple[list[int], list[int], list[int], list[float], float]:
    """Turn t of an episode as (prompt, response, action mask, sampler log-probs, reward): the first `cut` ids of
    its query are the prompt, the rest of the query and the reply the response; an unplayed turn is the shared
    prompt alone."""
    played = t < len(e.replies)
    query = e.queries[t] if played else shared
    head, reply = (query[cut:] if cut else []), (e.replies[t] if played else [])
    start = sum(
        len(r) + len(a) for r, a in zip(e.replies[:t], e.afters[:t])
    )  # the reply's place in e.response
    logprobs = [0.0] * len(head) + e.logprobs[start : start + len(reply)]
    reward = e.turns[t]["reward"] if played else 0.0
    return query[:cut] if cut else query, head + reply, [0] * len(head) + [1] * len(reply), logprobs, reward


def _common_prefix_length(rows: list[list[int]]) -> int:
    """How many ids every row starts with."""
    first, shortest = rows[0], min(len(r) for r in rows)
    n = 0
    while n < shortest and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def episode_scores(batch: EpisodeBatch) -> Scores:
    """The score stage of an episode batch: the env is the one reward source (raw row `env`)."""
    return Scores(batch.returns[None], batch.returns, batch.ended_with_eos)


def prepare_envs(
    env_factory: Any,
    train_seeds: Any,
    eval_seeds: Any,
    args: Any,
    num_processes: int,
    eval_env_factory: Any = None,
) -> tuple[list[Any], list[Any], list[int], list[int] | None]:
    """The trainer's train envs (one per row of a step, built by `env_factory`) and eval envs (one per row of an
    eval batch, by `eval_env_factory`, else the train envs), all checked to be text envs, and its train / eval
    seeds, or a one-line error before any work."""
    from rlhf.envs import check_text_env  # gymnasium: only env runs import it

    need = args.rollout_batch_size * num_processes
    if train_seeds is None or len(train_seeds) < need:
        raise ValueError(
            f"train_seeds: an env run needs at least rollout_batch_size * num_processes = {need} env seeds, got "
            f"{None if train_seeds is None else len(train_seeds)}"
        )
    if not eval_seeds and (args.eval_steps or args.eval_on_start):
        raise ValueError(
            f"eval_steps={args.eval_steps} / eval_on_start={args.eval_on_start} but no eval_seeds were given to "
            "PPOTrainer"
        )
    evals = eval_seeds and eval_env_factory is not None
    rows = max(
        args.rollout_batch_size * args.num_generations,
        args.eval_batch_size if eval_seeds and not evals else 0,
    )
    envs = [env_factory() for _ in range(rows)]
    eval_envs = [eval_env_factory() for _ in range(args.eval_batch_size)] if evals else envs
    check_text_env(envs[0])
    if eval_envs is not envs:
        check_text_env(eval_envs[0])
    seeds = [int(s) for s in eval_seeds] if eval_seeds else None
    return envs, eval_envs, [int(s) for s in train_seeds], seeds
