"""Offline RLHF demo: corpus → tokenizer + tiny GPT-2 → SFT → reward model → PPO → evaluation → report.

    rlhf-demo                                   # = python -m rlhf.demo --config recipes/demo.yaml
    rlhf-demo --frontier --resume               # + DPO and best-of-n on one gold-vs-KL frontier (rlhf/demo/study.py)
    rlhf-demo --stage ppo --resume              # one stage; skip what is done, continue PPO from its checkpoint
    rlhf-demo --sft_model ./my-sft --reward_model ./my-rm --stage ppo

Everything runs on CPU with no Hub access. The task (rlhf/demo/corpus.py): product reviews from a seeded
template grammar; the gold judge is the lexicon sentiment of the completion. The reward model learns the judge
from noisy preference pairs; PPO optimises the reward model, and the evaluation asks the gold judge whether that
helped. Outputs go to `output_dir` (see `write_report`).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

BASE_STAGES = ("sft", "rm", "ppo", "eval")
STUDY_STAGES = ("dpo", "frontier")  # with --frontier (or one by one with --stage)
STAGES = BASE_STAGES + STUDY_STAGES


@dataclass
class DemoConfig:
    """Offline SFT → reward model → PPO demo on a generated review corpus (defaults = recipes/demo.yaml)."""

    RENAMED: ClassVar[dict[str, str]] = {"run_dir": "output_dir"}

    output_dir: str = field(
        default="runs/demo", metadata={"help": "where models, metrics, plots and report go"}
    )
    stage: Literal["sft", "rm", "ppo", "eval", "dpo", "frontier", "all"] = field(
        default="all", metadata={"help": "run one stage (its inputs must exist) or all"}
    )
    frontier: bool = field(
        default=False,
        metadata={"help": "--stage all also runs the dpo and frontier stages (PPO vs DPO vs best-of-n)"},
    )
    overwrite: bool = field(default=False, metadata={"help": "redo stages whose outputs already exist"})
    resume: bool = field(
        default=False, metadata={"help": "skip finished stages; continue PPO from its latest checkpoint"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the corpus, every model and every sampler"})
    num_threads: int = field(
        default=1, metadata={"help": "torch CPU threads; a model this small gains nothing from more"}
    )

    # --- model sources (empty = build/train here) --------------------------------------------------------
    base_model: str = field(
        default="", metadata={"help": "Hub id or path SFT starts from; empty = a tiny GPT-2 built here"}
    )
    sft_model: str = field(
        default="", metadata={"help": "Hub id or path of an SFT policy to use instead of training one"}
    )
    reward_model: str = field(
        default="", metadata={"help": "Hub id or path of a reward model to use instead of training one"}
    )

    # --- data and tiny model -----------------------------------------------------------------------------
    n_reviews: int = field(default=4000, metadata={"help": "reviews in the SFT corpus"})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary of the tiny tokenizer"})
    n_layer: int = field(default=2, metadata={"help": "tiny GPT-2 layers"})
    n_embd: int = field(default=64, metadata={"help": "tiny GPT-2 width"})
    n_head: int = field(default=4, metadata={"help": "tiny GPT-2 heads"})
    max_length: int = field(default=96, metadata={"help": "token limit for SFT/RM training texts"})

    # --- SFT -----------------------------------------------------------------------------------------------
    sft_steps: int = field(default=200, metadata={"help": "SFT optimizer steps"})
    sft_batch_size: int = field(default=32, metadata={"help": "SFT batch size"})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "SFT peak learning rate (cosine)"})

    # --- reward model ----------------------------------------------------------------------------------------
    n_pairs: int = field(default=3000, metadata={"help": "training preference pairs"})
    n_eval_pairs: int = field(default=500, metadata={"help": "held-out pairs (eval prompts, clean labels)"})
    label_noise: float = field(default=0.1, metadata={"help": "fraction of training labels flipped"})
    rm_steps: int = field(default=100, metadata={"help": "reward-model optimizer steps"})
    rm_batch_size: int = field(default=32, metadata={"help": "pairs per reward-model step"})
    rm_learning_rate: float = field(default=1e-3, metadata={"help": "reward-model peak learning rate"})

    # --- PPO -----------------------------------------------------------------------------------------------
    ppo_steps: int = field(default=80, metadata={"help": "PPO steps (rollout + update)"})
    rollout_batch_size: int = field(default=32, metadata={"help": "prompts per PPO step"})
    mini_batch_size: int = field(default=16, metadata={"help": "completions per PPO optimizer step"})
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    ppo_learning_rate: float = field(default=1e-4, metadata={"help": "policy learning rate (tiny model)"})
    critic_learning_rate: float = field(default=1e-4, metadata={"help": "critic learning rate"})
    kl_coef: float = field(
        default=0.05, metadata={"help": "beta of the per-token KL penalty to the SFT model"}
    )
    max_new_tokens: int = field(default=48, metadata={"help": "completion budget (reviews are ~27 tokens)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (PPO and evaluation)"})
    save_steps: int = field(
        default=10,
        metadata={
            "help": "PPO checkpoint every N steps (for --resume; all are kept: the frontier's PPO points)"
        },
    )

    # --- evaluation ----------------------------------------------------------------------------------------
    n_eval_prompts: int = field(default=96, metadata={"help": "held-out prompts scored for SFT and PPO"})
    n_report_samples: int = field(default=6, metadata={"help": "before/after samples shown in report.md"})

    # --- the over-optimisation frontier: PPO vs DPO vs best-of-n (rlhf/demo/study.py) ------------------------
    dpo_betas: list[float] = field(
        default_factory=lambda: [0.03, 0.1, 0.3],
        metadata={"help": "DPO runs, one per beta (the implicit reward's inverse temperature; each > 0)"},
    )
    dpo_steps: int = field(default=60, metadata={"help": "DPO optimizer steps per beta"})
    dpo_batch_size: int = field(default=32, metadata={"help": "preference pairs per DPO step"})
    dpo_learning_rate: float = field(default=3e-4, metadata={"help": "DPO peak learning rate (tiny model)"})
    bon_n: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
        metadata={
            "help": "best-of-n sizes (positive integers); the reward model picks, the gold judge scores"
        },
    )
    bon_pool_size: int = field(
        default=256,
        metadata={
            "help": "SFT samples per held-out prompt; best-of-n is exact over this pool (>= max bon_n)"
        },
    )
    frontier_samples: int = field(
        default=2, metadata={"help": "samples per held-out prompt for each PPO, DPO and SFT point"}
    )

    POSITIVE: ClassVar[tuple[str, ...]] = (
        "num_threads", "n_reviews", "vocab_size", "n_layer", "n_embd", "n_head", "max_length",
        "sft_steps", "sft_batch_size", "sft_learning_rate",
        "n_pairs", "n_eval_pairs", "rm_steps", "rm_batch_size", "rm_learning_rate",
        "ppo_steps", "rollout_batch_size", "mini_batch_size", "num_ppo_epochs", "ppo_learning_rate",
        "critic_learning_rate", "max_new_tokens", "temperature", "n_eval_prompts",
        "dpo_steps", "dpo_batch_size", "dpo_learning_rate", "bon_pool_size", "frontier_samples",
    )  # fmt: skip

    def __post_init__(self) -> None:
        """Every stage's settings, checked when the config is built: a bad one fails before any stage trains
        (not after minutes of SFT, when the corrected command is refused because stages are finished)."""
        from classic.common import check_non_negative, check_positive, check_unit_interval

        for name in self.POSITIVE:
            check_positive(name, getattr(self, name))
        for name in ("kl_coef", "save_steps", "n_report_samples"):
            check_non_negative(name, getattr(self, name))
        check_unit_interval("label_noise", self.label_noise)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        self._check_study()

    def _check_study(self) -> None:
        """The dpo and frontier stages' lists: DPO's beta scales a log-ratio (beta <= 0 is no DPO), n counts
        samples, and best-of-n over a pool needs the pool to hold at least n samples."""
        if not self.dpo_betas or not all(b > 0 and math.isfinite(b) for b in self.dpo_betas):
            raise ValueError(f"dpo_betas: every beta must be a number > 0, got {self.dpo_betas!r}")
        if not self.bon_n or not all(n >= 1 for n in self.bon_n):
            raise ValueError(f"bon_n: every n must be a positive integer, got {self.bon_n!r}")
        if self.bon_pool_size < max(self.bon_n):
            raise ValueError(
                f"bon_pool_size={self.bon_pool_size} must be >= the largest n in bon_n ({max(self.bon_n)})"
            )


def log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message)


def _quiet_libraries() -> None:
    """One bar per stage: silence the libraries' own bars (dataset maps, weight loading) and info logs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------------------------------------------------
# run directory


class RunDir:
    """`output_dir/<stage>/` holds each stage's model and a `stage.json` (seconds + key numbers) once it finished."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def stage(self, name: str) -> Path:
        return self.path / name

    def done(self, name: str) -> dict[str, Any] | None:
        marker = self.stage(name) / "stage.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def finish(self, name: str, seconds: float, **numbers: Any) -> dict[str, Any]:
        info = {"stage": name, "seconds": round(seconds, 2), **numbers}
        (self.stage(name) / "stage.json").write_text(json.dumps(info, indent=2))
        return info

    def clear(self, name: str) -> None:
        shutil.rmtree(self.stage(name), ignore_errors=True)


def plan_stages(cfg: DemoConfig, run: RunDir) -> list[str]:
    """Which stages to run; refuses (before any training) to clobber finished work unless told to."""
    wanted = list(BASE_STAGES + STUDY_STAGES * cfg.frontier) if cfg.stage == "all" else [cfg.stage]
    if cfg.sft_model:
        wanted = [s for s in wanted if s != "sft"]
    if cfg.overwrite and cfg.resume:
        raise ValueError("--overwrite and --resume contradict each other; pick one")
    finished = [s for s in wanted if run.done(s)]
    if finished and not (cfg.overwrite or cfg.resume):
        what = "a finished run" if (run.path / "summary.json").is_file() else f"finished stage(s) {finished}"
        raise FileExistsError(
            f"{run.path} already holds {what}. Pass --overwrite to redo it, --resume to keep finished stages "
            "and continue, or --output_dir <new dir>."
        )
    if cfg.resume:
        wanted = [s for s in wanted if s not in finished]
    return wanted


def model_sources(cfg: DemoConfig, run: RunDir) -> dict[str, str]:
    return {
        "sft": cfg.sft_model or str(run.stage("sft")),
        "rm": cfg.reward_model or str(run.stage("rm")),
        "ppo": str(run.stage("ppo")),
    }


def validate_sources(cfg: DemoConfig, run: RunDir, todo: list[str]) -> None:
    """Every model given on the command line, and every earlier stage's output a stage needs, must load, checked
    before any training starts (rlhf.hub gives the clear message for missing paths / unreachable Hub ids)."""
    from rlhf.gguf import is_gguf
    from rlhf.hub import load_model_config

    for name in ("sft_model", "reward_model"):
        if is_gguf(getattr(cfg, name)):
            raise ValueError(
                f"{name}={getattr(cfg, name)!r}: a GGUF file is taken as --base_model only; convert it to a "
                "folder first (python -m rlhf.gguf FILE OUT) and pass the folder"
            )
    for name in ("base_model", "sft_model", "reward_model"):
        if getattr(cfg, name):
            load_model_config(getattr(cfg, name), field=name)
    sources = model_sources(cfg, run)
    needs = {
        "rm": ["sft"],
        "ppo": ["sft", "rm"],
        "eval": ["sft", "rm", "ppo"],
        "dpo": ["sft"],
        "frontier": ["sft", "rm", "ppo", "dpo"],
    }
    for stage in todo:
        for need in needs.get(stage, []):
            if need in todo or (need == "sft" and cfg.sft_model) or (need == "rm" and cfg.reward_model):
                continue
            if not run.done(need):
                raise FileNotFoundError(
                    f"--stage {stage} needs the {need} stage's model in {sources[need]}, which is missing or "
                    f"unfinished: run `--stage {need}` first"
                    + {"sft": " or pass --sft_model", "rm": " or pass --reward_model"}.get(need, "")
                )


# ------------------------------------------------------------------------------------------------------------
# stages


def run_sft(cfg: DemoConfig, run: RunDir) -> dict[str, Any]:
    from rlhf.demo import corpus, stages

    t0 = time.perf_counter()
    train_prompts, _ = corpus.split_prompts(cfg.seed)
    texts = corpus.make_reviews(train_prompts, cfg.n_reviews, seed=cfg.seed)
    model, tokenizer = stages.build_base_model(
        texts,
        cfg.base_model,
        cfg.vocab_size,
        cfg.seed,
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
    )
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"[data] {len(texts)} reviews, tokenizer vocab {len(tokenizer)} (PAD {tokenizer.pad_token_id}, EOS "
        f"{tokenizer.eos_token_id}), policy {n_params / 1e6:.2f}M parameters"
    )
    out = run.stage("sft")
    loss = stages.train_sft(cfg, model, tokenizer, texts, out)
    shutil.rmtree(out / "trl", ignore_errors=True)
    return run.finish("sft", time.perf_counter() - t0, final_loss=loss, n_params=n_params)


def run_rm(cfg: DemoConfig, run: RunDir) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from rlhf.demo import corpus, stages

    t0 = time.perf_counter()
    sources = model_sources(cfg, run)
    train_prompts, eval_prompts = corpus.split_prompts(cfg.seed)
    out = run.stage("rm")
    train_accuracy = None  # no training when --reward_model is given
    if not cfg.reward_model:
        tokenizer = AutoTokenizer.from_pretrained(sources["sft"])
        pairs = corpus.make_preference_pairs(
            train_prompts, cfg.n_pairs, seed=cfg.seed + 1, label_noise=cfg.label_noise
        )
        log(
            f"[rm] {len(pairs['chosen'])} pairs, {sum(not c for c in pairs['gold_correct'])} labels flipped "
            f"(label_noise={cfg.label_noise})"
        )
        train_accuracy = stages.train_reward_model(cfg, sources["sft"], tokenizer, pairs, out)
        shutil.rmtree(out / "trl", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    # Held-out pairs come from prompts the RM never saw, labelled by the gold judge without noise.
    held_out = corpus.make_preference_pairs(
        eval_prompts, cfg.n_eval_pairs, seed=cfg.seed + 2, label_noise=0.0
    )
    rm = stages.load_eos_reward_model(sources["rm"])
    accuracy = stages.pairwise_accuracy(rm, held_out["chosen"], held_out["rejected"])
    return run.finish(
        "rm", time.perf_counter() - t0, rm_accuracy=accuracy, rm_train_accuracy_noisy=train_accuracy
    )


def ppo_config(cfg: DemoConfig, out: Path, resume: str | None) -> Any:
    """The rlhf.PPOConfig of the PPO stage (built up front too, by `validate_ppo_settings`)."""
    from rlhf import PPOConfig

    return PPOConfig(
        output_dir=str(out),
        seed=cfg.seed,
        max_steps=cfg.ppo_steps,
        rollout_batch_size=cfg.rollout_batch_size,
        num_generations=1,
        mini_batch_size=cfg.mini_batch_size,
        micro_batch_size=cfg.mini_batch_size,
        num_ppo_epochs=cfg.num_ppo_epochs,
        learning_rate=cfg.ppo_learning_rate,
        critic_learning_rate=cfg.critic_learning_rate,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        kl_coef=cfg.kl_coef,
        advantage_estimator="gae",
        critic_init="reward_model",
        # weight 0: the gold judge is only logged, so the plot shows proxy vs gold reward per step
        reward_weights=[1.0, 0.0],
        missing_eos_penalty=None,
        save_steps=cfg.save_steps,
        save_total_limit=None,  # every checkpoint stays: the frontier stage evaluates PPO along training
        resume_from_checkpoint=resume,
        # greedy completions for the held-out prompts every eighth of the run, scored by the proxy RM and the
        # gold judge: eval.png shows whether the gold reward follows the proxy on prompts PPO never trained on
        eval_steps=max(cfg.ppo_steps // 8, 1),
        eval_on_start=True,
    )


def trained_ppo_steps(run: RunDir) -> int:
    """Steps of the newest complete PPO checkpoint in the run (0 if none)."""
    from rlhf.checkpoint import PREFIX, list_checkpoints

    found = list_checkpoints(run.stage("ppo"))
    return int(found[-1].name[len(PREFIX) :]) if found else 0


def validate_ppo_settings(cfg: DemoConfig, run: RunDir) -> None:
    """What the PPO stage would refuse, refused before any stage trains: its PPOConfig (built here, so that
    PPOConfig's own checks give the message), the data and context window the trainer checks, and a --resume
    that could not give a PPO policy of `ppo_steps` steps."""
    from rlhf.demo import corpus
    from rlhf.hub import load_model_config
    from rlhf.tiny import tiny_gpt2_config

    try:
        args = ppo_config(cfg, run.stage("ppo"), None)
    except ValueError as err:
        raise ValueError(f"PPO stage settings: {err}") from None
    n_prompts = len(corpus.split_prompts(cfg.seed)[0])
    if cfg.rollout_batch_size > n_prompts:
        raise ValueError(
            f"rollout_batch_size={cfg.rollout_batch_size} exceeds the {n_prompts} training prompts"
        )
    source = cfg.sft_model or cfg.base_model
    model_config = load_model_config(source) if source else None
    positions = (
        getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
        if model_config is not None
        else inspect.signature(tiny_gpt2_config).parameters["n_positions"].default
    )
    if positions and args.max_prompt_length + cfg.max_new_tokens > positions:
        raise ValueError(
            f"max_new_tokens={cfg.max_new_tokens}: with prompts of up to {args.max_prompt_length} tokens it exceeds "
            f"the policy's context window ({positions} positions)"
        )
    if not cfg.resume or cfg.stage not in ("all", "ppo"):
        return
    done, out = run.done("ppo"), run.stage("ppo")
    # a finished stage records its steps (its checkpoints may have been deleted to save space)
    trained = (done or {}).get("steps") or trained_ppo_steps(run)
    if trained > cfg.ppo_steps:
        raise ValueError(
            f"--ppo_steps {cfg.ppo_steps} is below the {trained} PPO steps already trained in {out}, so --resume "
            f"cannot give a {cfg.ppo_steps}-step policy: pass --overwrite to retrain PPO, --ppo_steps {trained} to "
            "keep it, or --output_dir <new dir>"
        )
    if done and 0 < trained < cfg.ppo_steps:
        raise ValueError(
            f"--ppo_steps {cfg.ppo_steps}: the finished PPO stage in {out} trained {trained} steps and --resume skips "
            f"finished stages: pass --overwrite to retrain PPO, --ppo_steps {trained} to keep it, or "
            "--output_dir <new dir>"
        )


def validate_study_settings(cfg: DemoConfig, run: RunDir, todo: list[str]) -> None:
    """A finished dpo or frontier stage that --resume would keep must have been run with the settings asked for
    now (else the report would show other betas or other n than the command says)."""
    from rlhf.demo.study import DPO_SETTINGS, FRONTIER_SETTINGS

    for stage, names in (("dpo", DPO_SETTINGS), ("frontier", FRONTIER_SETTINGS)):
        done = run.done(stage)
        if stage in todo or not done or not (cfg.resume or "frontier" in todo):
            continue  # redone, not there, or neither kept for this summary nor read by a frontier stage
        for name in names:
            if done["settings"][name] != getattr(cfg, name):
                raise ValueError(
                    f"--{name} {getattr(cfg, name)}: the finished {stage} stage in {run.stage(stage)} used "
                    f"{done['settings'][name]} and --resume skips finished stages: pass --overwrite to redo it, "
                    f"--{name} {done['settings'][name]} to keep it, or --output_dir <new dir>"
                )


def run_ppo(cfg: DemoConfig, run: RunDir) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer

    from classic.runlog import read_metrics
    from rlhf import PPOTrainer
    from rlhf.checkpoint import list_checkpoints
    from rlhf.demo import corpus, stages

    t0 = time.perf_counter()
    sources = model_sources(cfg, run)
    out = run.stage("ppo")
    resume = "latest" if cfg.resume and out.is_dir() and list_checkpoints(out) else None
    if resume:
        log(f"[ppo] resuming from the latest checkpoint in {out}")
    elif out.exists():
        run.clear("ppo")
    train_prompts, eval_prompts = corpus.split_prompts(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(sources["sft"])
    args = ppo_config(cfg, out, resume)
    trainer = PPOTrainer(
        model=sources["sft"],
        reward_funcs=[stages.load_eos_reward_model(sources["rm"]), corpus.gold_judge],
        args=args,
        train_dataset=datasets.Dataset.from_dict({"prompt": train_prompts}),
        eval_dataset=datasets.Dataset.from_dict({"prompt": eval_prompts[: cfg.n_eval_prompts]}),
        processing_class=tokenizer,
    )
    history = trainer.train()
    trainer.save_model(out)
    # The run's metrics.jsonl has a row per step, also for the steps trained before a resume. A resume from the
    # final checkpoint (killed before stage.json was written) trains nothing: its numbers come from there.
    rows = read_metrics(out / "metrics.jsonl")
    last = next((r for r in reversed(rows) if r.get("step") == cfg.ppo_steps), None)
    if last is None:
        raise RuntimeError(f"{out / 'metrics.jsonl'} has no row for the last PPO step ({cfg.ppo_steps})")
    # seconds: this invocation, plus the step times of the steps earlier (interrupted) invocations trained
    earlier = sum(r.get("time/step", 0.0) for r in rows if r.get("step", 0) <= cfg.ppo_steps - len(history))
    return run.finish(
        "ppo",
        earlier + time.perf_counter() - t0,
        final_proxy_reward=last["reward/rm"],
        final_gold_reward=last["reward/gold_judge"],
        final_kl=last.get("kl"),  # absent with kl_coef 0 (no reference model)
        steps=cfg.ppo_steps,
    )


def run_eval(cfg: DemoConfig, run: RunDir) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.demo import corpus, stages

    t0 = time.perf_counter()
    sources = model_sources(cfg, run)
    _, eval_prompts = corpus.split_prompts(cfg.seed)
    prompts = eval_prompts[: cfg.n_eval_prompts]
    rm = stages.load_eos_reward_model(sources["rm"])
    results: dict[str, dict[str, Any]] = {}
    token_ids = {}
    policies = {}
    for name in ("sft", "ppo"):
        policies[name] = AutoModelForCausalLM.from_pretrained(sources[name])
        tokenizer = AutoTokenizer.from_pretrained(sources[name])
        # the same prompts and the same seed for both policies
        texts, token_ids[name] = stages.sample(
            policies[name], tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, seed=cfg.seed + 7
        )
        results[name] = {
            "completions": texts,
            "gold": corpus.gold_judge(prompts, texts),
            "proxy": rm(prompts, texts),
            "length": [len(r) for _, r in token_ids[name]],
            "eos": [bool(len(r)) and int(r[-1]) == tokenizer.eos_token_id for _, r in token_ids[name]],
        }
    # KL(PPO || SFT) per completion, estimated on PPO's own samples (k1, summed over tokens; nats), both policies
    # at the temperature the samples were drawn at
    kl = stages.sampled_kl(policies["ppo"], policies["sft"], token_ids["ppo"], cfg.temperature)
    wins = [
        (p > s) + 0.5 * (p == s) for p, s in zip(results["ppo"]["gold"], results["sft"]["gold"])
    ]  # ties count half
    out = run.stage("eval")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.jsonl").open("w") as f:
        for i, prompt in enumerate(prompts):
            row = {"prompt": prompt}
            for name in ("sft", "ppo"):
                r = results[name]
                row[name] = {"completion": r["completions"][i], "gold": r["gold"][i], "proxy": r["proxy"][i]}
            f.write(json.dumps(row) + "\n")
    numbers = {
        "n_eval_prompts": len(prompts),
        **{
            f"{metric}_{name}": statistics.mean(results[name][key])
            for name in ("sft", "ppo")
            for metric, key in (
                ("gold_reward", "gold"),
                ("proxy_reward", "proxy"),
                ("completion_length", "length"),
                ("eos_fraction", "eos"),
            )
        },
        "kl_ppo": kl,
        "gold_win_rate_ppo_vs_sft": statistics.mean(wins),
    }
    return run.finish("eval", time.perf_counter() - t0, **numbers)


# ------------------------------------------------------------------------------------------------------------


def summarise(cfg: DemoConfig, run: RunDir) -> dict[str, Any] | None:
    """summary.json + report.md + plots, once every stage has finished."""
    from rlhf.demo.report import write_report

    done = {s: run.done(s) for s in STAGES}
    if not all(done[s] for s in BASE_STAGES) and not (
        cfg.sft_model and all(done[s] for s in ("rm", "ppo", "eval"))
    ):
        return None
    ran = [s for s in STAGES if s in BASE_STAGES or done[s]]
    seconds = {s: (done[s] or {}).get("seconds", 0.0) for s in ran}
    summary = {
        "rm_accuracy": done["rm"]["rm_accuracy"],
        "rm_train_accuracy_noisy": done["rm"].get("rm_train_accuracy_noisy"),
        **{k: v for k, v in done["eval"].items() if k not in ("stage", "seconds")},
        "sft_final_loss": (done["sft"] or {}).get("final_loss"),
        "seconds": {**seconds, "total": round(sum(seconds.values()), 2)},
        "seed": cfg.seed,
        "num_threads": cfg.num_threads,
    }
    if done["frontier"]:
        from rlhf.demo.study import frontier_summary

        summary["frontier"] = frontier_summary(run)
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(run.path, summary, cfg)
    return summary


def run_dpo(cfg: DemoConfig, run: RunDir) -> dict[str, Any]:
    from rlhf.demo import study

    return study.run_dpo(cfg, run)


def run_frontier(cfg: DemoConfig, run: RunDir) -> dict[str, Any]:
    from rlhf.demo import study

    return study.run_frontier(cfg, run)


RUNNERS = {
    "sft": run_sft,
    "rm": run_rm,
    "ppo": run_ppo,
    "eval": run_eval,
    "dpo": run_dpo,
    "frontier": run_frontier,
}
KEY_NUMBER = {
    "sft": lambda i: f"final train loss {i['final_loss']:.3f}",
    "rm": lambda i: f"held-out pairwise accuracy {i['rm_accuracy']:.3f}",
    "ppo": lambda i: (
        f"last step: proxy reward {i['final_proxy_reward']:.3f}, gold {i['final_gold_reward']:.3f}, "
        + (f"KL {i['final_kl']:.2f}" if i["final_kl"] is not None else "no KL (kl_coef 0)")
    ),
    "eval": lambda i: (
        f"gold reward SFT {i['gold_reward_sft']:.3f} -> PPO {i['gold_reward_ppo']:.3f}, proxy "
        f"{i['proxy_reward_sft']:.3f} -> {i['proxy_reward_ppo']:.3f}, KL(PPO||SFT) {i['kl_ppo']:.2f}"
    ),
    "dpo": lambda i: (
        "held-out implicit reward accuracy "
        + ", ".join(f"beta {b['beta']:g} {b['heldout_accuracy']:.3f}" for b in i["betas"])
    ),
    "frontier": lambda i: f"highest gold reward {i['best_gold']:.3f} ({i['best']}, KL {i['best_kl']:.2f})",
}


def prepare(cfg: DemoConfig) -> tuple[RunDir, list[str]]:
    """Every check that can fail on bad input, before any training: stages to run, existing outputs, every
    model source (clear messages for missing paths and unreachable Hub ids) and the PPO stage's settings (the
    DemoConfig's own fields are checked when it is built)."""
    _quiet_libraries()
    run = RunDir(cfg.output_dir)
    todo = plan_stages(cfg, run)
    validate_sources(cfg, run, todo)
    validate_ppo_settings(cfg, run)
    validate_study_settings(cfg, run, todo)
    return run, todo


def execute(cfg: DemoConfig, run: RunDir, todo: list[str]) -> dict[str, Any] | None:
    """Run the planned stages; returns the summary when the run is complete (else None)."""
    import torch

    from classic.common import seed_everything

    torch.set_num_threads(cfg.num_threads)
    run.path.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:
        for stage in todo:
            run.clear(stage)
        (run.path / "summary.json").unlink(missing_ok=True)
    (run.path / "config.json").write_text(json.dumps(cfg.__dict__, indent=2))
    t_all = time.perf_counter()
    for stage in todo:
        seed_everything(cfg.seed)  # each stage's randomness is independent of which stages ran before it
        if stage != "ppo":  # PPO keeps its directory when resuming from a checkpoint
            run.clear(stage)
        info = RUNNERS[stage](cfg, run)
        log(f"[{stage}] done in {info['seconds']:.1f} s: {KEY_NUMBER[stage](info)}")
    summary = summarise(cfg, run)
    if summary:
        log(
            f"[demo] {time.perf_counter() - t_all:.1f} s this invocation; per stage "
            + ", ".join(f"{s} {v:.1f} s" for s, v in summary["seconds"].items() if s != "total")
            + f". Report: {run.path / 'report.md'}"
        )
    return summary


def run_demo(cfg: DemoConfig) -> dict[str, Any] | None:
    return execute(cfg, *prepare(cfg))


def main(argv: list[str] | None = None) -> None:
    from classic.cli import exit_on_bad_input, parse_config

    with exit_on_bad_input("rlhf-demo"):  # bad input: one clear line and status 2, no traceback
        cfg = parse_config(DemoConfig, argv)
        run, todo = prepare(cfg)
    execute(cfg, run, todo)


if __name__ == "__main__":
    main()
