"""Text environments for language models: a gymnasium env whose observations and actions are strings.

A language-model env is a plain `gymnasium.Env` with `spaces.Text` observation and action spaces:
`reset(seed=...) -> (obs: str, info)` and `step(reply: str) -> (obs: str, reward, terminated, truncated, info)`.
`reset`'s info carries `system_prompt` (the rules and the answer format), from which the episode runner builds
the chat. Any env that follows this works, third-party ones too; `check_text_env` says when one does not.

`TextEnv` turns a discrete-action env into one: `describe(env, obs) -> str` renders an observation as text and
`parse(env, reply) -> int | None` reads the model's reply as an action (None: unparseable). An unparseable reply is
part of the task, not a crash: the inner env is not stepped (the state is unchanged), the observation says what
was expected and repeats the state, and the reward is `invalid_penalty`; with `end_on_invalid=True` the episode
ends there (terminated). `.unwrapped` is the inner env itself (gymnasium's default), so a `classic` agent can
train on the very same object.

Observations must lie in `observation_space` (`check_env` checks it): printable ASCII (`CHARSET`) of at most
`max_obs_length` characters; `TextEnv` raises a one-line error when `describe` returns anything else. Any str is
accepted as a reply: the action space is what `sample()` draws from (random strings, which are invalid replies).
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

CHARSET = string.printable  # digits, letters, punctuation, space, \t \n \r \x0b \x0c
MAX_OBS_LENGTH = 8192
MAX_REPLY_LENGTH = 2048


def text_space(max_length: int) -> spaces.Text:
    """Strings of printable ASCII of at most `max_length` characters (an empty reply included): the observation
    and action space of a text env."""
    return spaces.Text(max_length=max_length, min_length=0, charset=CHARSET)


def env_name(env: gym.Env) -> str:
    """The registered id if there is one, else the class name: what error messages call the env."""
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(getattr(env, "unwrapped", env)).__name__


def check_text_env(env: gym.Env) -> None:
    """Raise a one-line TypeError unless both spaces of `env` are `spaces.Text` (what the runner needs)."""
    obs_space, action_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, spaces.Text) and isinstance(action_space, spaces.Text)):
        raise TypeError(
            f"{env_name(env)} is not a text env: observation_space={obs_space}, action_space={action_space}; "
            "a language-model env needs gymnasium.spaces.Text for both: wrap it in "
            "rlhf.envs.TextEnv(env, describe, parse, system_prompt)"
        )


def one_line(text: str, limit: int = 200) -> str:
    """`text` on one line (newlines escaped by repr), cut to `limit` characters: for error messages."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def word_parser(
    words: Sequence[str], aliases: dict[str, str] | None = None, several: str = "last"
) -> Callable[[gym.Env, str], int | None]:
    """A `parse` for actions named by words: the action is the index of the word in `words`.

    Matching is case-insensitive on whole words, and the LAST mention in the reply wins (a model that reasons
    first, "not left... so: down", answers at the end). `aliases` maps other phrases to a word ("pick up" ->
    "pickup"). A reply that is only a number (e.g. "2") is read as the action index. Anything else, or an index
    out of range, is None (unparseable). `several="invalid"`: a reply that names two different actions is None
    too; RL finds "you can move left, down, right or" (cut off by max_new_tokens after its last word) and plays
    the list's last word whatever the state, an answer that is not one."""
    if several not in ("last", "invalid"):
        raise ValueError(f"several must be 'last' or 'invalid', got {several!r}")
    lowered = [w.lower() for w in words]
    names = {w: w for w in lowered} | {k.lower(): v.lower() for k, v in (aliases or {}).items()}
    # longest first, so an alias like "pick up" wins over a word that is its prefix
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"\b({alternatives})\b", re.IGNORECASE)

    def parse(env: gym.Env, reply: str) -> int | None:
        stripped = reply.strip().rstrip(".")
        if stripped.isdigit() and stripped.isascii():
            index = int(stripped)
            return index if index < len(words) else None
        mentions = [names[m.lower()] for m in pattern.findall(reply)]
        if not mentions or (several == "invalid" and len(set(mentions)) > 1):
            return None
        return lowered.index(mentions[-1])

    return parse


class TextEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Wrap a discrete-action env so that a language model plays it in text.

    Args:
        env: the env to wrap (any `Discrete` action space); `.unwrapped` stays this env's unwrapped env.
        describe: `describe(env, obs) -> str` renders the inner env's observation (env is the wrapped `env`;
            its state is at `env.unwrapped`). Called after every reset and step.
        parse: `parse(env, reply) -> int | None`, the action in the reply, None if unparseable (env as for
            `describe`: moves listed in the state, as in checkers, are read from it). A parse that raises is a
            bug in the parse, reported as a one-line ValueError (env, reply, cause).
        system_prompt: the rules and the answer format, returned in `reset`'s info["system_prompt"].
        reply_hint: what a valid reply looks like ("Reply with one of: left, down, right, up."), shown after an
            unparseable reply.
        invalid_penalty: reward for an unparseable reply (the inner env is not stepped).
        end_on_invalid: end the episode (terminated) on an unparseable reply instead of asking again.
        success: optional `success(env, reward, terminated, info) -> bool`, evaluated after each valid step and
            stored as info["success"] (False on invalid replies); where the task defines success.
        max_turns: optional limit on replies per episode, valid or not (truncated after that many); the inner
            env's own time limit counts valid moves only, so this bounds a model that never answers well.
        max_obs_length, max_reply_length: the Text spaces' lengths.

    Step info: `invalid_action` (bool), `action` (the parsed int, or None), `turn` (replies so far), `success`
    (when `success` is given), and on a valid step everything the inner env's info holds.
    """

    def __init__(
        self,
        env: gym.Env,
        describe: Callable[[gym.Env, Any], str],
        parse: Callable[[gym.Env, str], int | None],
        system_prompt: str,
        reply_hint: str = "",
        invalid_penalty: float = -0.1,
        end_on_invalid: bool = False,
        success: Callable[[gym.Env, float, bool, dict], bool] | None = None,
        max_turns: int | None = None,
        max_obs_length: int = MAX_OBS_LENGTH,
        max_reply_length: int = MAX_REPLY_LENGTH,
    ) -> None:
        # recorded so that `env.spec.make()` rebuilds the wrapper (describe and parse get the env as an argument,
        # so they must not hold on to one instance)
        gym.utils.RecordConstructorArgs.__init__(
            self,
            describe=describe,
            parse=parse,
            system_prompt=system_prompt,
            reply_hint=reply_hint,
            invalid_penalty=invalid_penalty,
            end_on_invalid=end_on_invalid,
            success=success,
            max_turns=max_turns,
            max_obs_length=max_obs_length,
            max_reply_length=max_reply_length,
        )
        gym.Wrapper.__init__(self, env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(f"TextEnv needs a Discrete action space, {env_name(env)} has {env.action_space}")
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be a positive integer or None, got {max_turns!r}")
        self.describe, self.parse, self.success = describe, parse, success
        self.system_prompt, self.reply_hint = system_prompt, reply_hint
        self.invalid_penalty, self.end_on_invalid = invalid_penalty, bool(end_on_invalid)
        self.max_turns = max_turns
        if any(c not in CHARSET for c in reply_hint):
            raise ValueError(f"reply_hint must be printable ASCII (CHARSET), got {one_line(reply_hint)}")
        self.observation_space = text_space(max_obs_length)
        self.action_space = text_space(max_reply_length)
        self._state_text, self._turn = "", 0

    def _render(self, obs: Any) -> str:
        text = self.describe(self.env, obs)
        if text not in self.observation_space:
            bad = sorted({c for c in text if c not in CHARSET})
            raise ValueError(
                f"{env_name(self)}: describe returned text outside the observation space (length {len(text)}, "
                f"max {self.observation_space.max_length}; characters outside CHARSET: {bad}): "
                f"{one_line(text)}"
            )
        return text

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._state_text, self._turn = self._render(obs), 0
        return self._state_text, {**info, "system_prompt": self.system_prompt}

    def _parse(self, reply: str) -> int | None:
        try:
            action = self.parse(self.env, reply)
        except Exception as e:
            cause = " ".join(f"{type(e).__name__}: {e}".split())
            raise ValueError(f"{env_name(self)}: parse raised on reply {one_line(reply)}: {cause}") from e
        if action is not None and not self.env.action_space.contains(action):
            raise ValueError(
                f"{env_name(self)}: parse returned {action!r} for reply {one_line(reply)}, which is not in the "
                f"action space {self.env.action_space} (return None for an unparseable reply)"
            )
        return action

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        reply = action
        parsed = self._parse(reply)
        self._turn += 1
        truncated_by_turns = bool(self.max_turns is not None and self._turn >= self.max_turns)
        if parsed is None:  # state unchanged: say what was expected and show the state again
            info = {"invalid_action": True, "action": None, "turn": self._turn}
            if self.success is not None:
                info["success"] = False
            obs = f"Your reply could not be read as a move. {self.reply_hint}\n\n{self._state_text}"
            obs = obs[: self.observation_space.max_length]
            terminated = self.end_on_invalid
            return obs, float(self.invalid_penalty), terminated, truncated_by_turns and not terminated, info
        obs, reward, terminated, truncated, inner_info = self.env.step(int(parsed))
        self._state_text = self._render(obs)
        info = {**inner_info, "invalid_action": False, "action": int(parsed), "turn": self._turn}
        if self.success is not None:
            info["success"] = bool(self.success(self.env, float(reward), bool(terminated), inner_info))
        truncated = bool(truncated) or (truncated_by_turns and not terminated)
        return self._state_text, float(reward), bool(terminated), truncated, info


def random_reply_demonstrations(
    env: gym.Env, seeds: Iterable[int], replies: Sequence[str], max_turns: int, rows_per_episode: int = 2
) -> list[dict]:
    """A format warm-start that teaches nothing about the task, for TRL's SFTTrainer: for each seed, an episode
    of the text env `env` played with replies drawn uniformly from `replies` whatever the state (for FrozenLake,
    the four moves), and `rows_per_episode` of its turns, drawn uniformly, as conversational prompt/completion
    rows: the dialogue up to that turn's observation, and that turn's reply. A model trained on them answers in
    the env's format and, having seen every reply equally often on every kind of state and after every kind of
    earlier reply, chooses among them about uniformly: which reply a state calls for is left to RL. The draws
    come from `random.Random(seed)` per episode, so the rows are a function of the arguments."""
    if max_turns < 1 or rows_per_episode < 1:
        raise ValueError(f"max_turns and rows_per_episode must be >= 1, got {max_turns}, {rows_per_episode}")
    rows, replies = [], list(replies)
    for seed in seeds:
        rng = random.Random(int(seed))
        obs, info = env.reset(seed=int(seed))
        messages = [{"role": "system", "content": info["system_prompt"]}, {"role": "user", "content": obs}]
        episode = []
        for _ in range(max_turns):
            reply = {"role": "assistant", "content": rng.choice(replies)}
            episode.append({"prompt": list(messages), "completion": [reply]})
            obs, _, terminated, truncated, _ = env.step(reply["content"])
            messages += [reply, {"role": "user", "content": obs}]
            if terminated or truncated:
                break
        rows += rng.sample(episode, min(rows_per_episode, len(episode)))
    return rows


def require_new_file(output: str) -> None:
    """A one-line ValueError if `output` exists: demonstrations never replace a file."""
    if Path(output).exists():
        raise ValueError(f"output={output!r} exists already; remove it or name another file")


def write_demonstrations(output: str, rows: list[dict]) -> Path:
    """Write `rows` as JSON lines to the new file `output` (parents created), for TRL's SFTTrainer; opened with
    "x", so a file written there meanwhile is not replaced either."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path
