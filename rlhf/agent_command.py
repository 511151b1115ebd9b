"""`rlhf train` with an `env:` key (= recipes/ppo.py with an agent YAML): a language model trained to play a text
env (rlhf/envs) over many turns, with PPO and a critic or any critic-free estimator.

    rlhf train --config recipes/frozenlake_agent.yaml [--field value ...]
    accelerate launch --config_file recipes/accelerate/ddp.yaml -m rlhf train --config recipes/frozenlake_agent.yaml

`AgentRecipeConfig` is the trainer's PPOConfig plus the model, the env (a name of rlhf.envs.TEXT_ENVS and its
keyword arguments), the train / eval seeds and LoRA. The model may be a Hub id, a folder or a GGUF file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from rlhf import PPOConfig, PPOTrainer
from rlhf.hub import load_model_config
from rlhf.train_command import LoraFields, lora_config, train_and_save


@dataclass(kw_only=True)
class AgentRecipeConfig(LoraFields, PPOConfig):
    """Multi-turn agent recipe: rlhf.PPOConfig plus the model, the env, its seeds and LoRA."""

    model_name_or_path: str = field(
        metadata={"help": "policy (and reference): Hub id, local directory or GGUF file"}
    )
    env: str = field(metadata={"help": "text env by name (rlhf.envs.TEXT_ENVS), e.g. frozenlake, calculator"})
    env_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "keyword arguments of the env's factory, e.g. {size: 4}"}
    )
    eval_env_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "held-out episodes: keyword arguments that replace env_kwargs' (e.g. {random_start: false}: "
            "train from random squares, evaluate from the start square); empty: the train env"
        },
    )
    num_train_seeds: int = field(default=1000, metadata={"help": "episodes reset with seeds 0 .. N-1"})
    eval_seed_start: int = field(
        default=100_000, metadata={"help": "held-out episodes use seeds from here (disjoint from training)"}
    )
    num_eval_seeds: int = field(default=32, metadata={"help": "how many held-out seeds eval_steps evaluates"})

    def __post_init__(self) -> None:
        super().__post_init__()
        from rlhf.envs import TEXT_ENVS

        if self.env not in TEXT_ENVS:
            raise ValueError(
                f"env: unknown text env {self.env!r}; valid names: {', '.join(sorted(TEXT_ENVS))}"
            )
        for name in ("env_kwargs", "eval_env_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(
                    f"{name}: expected a mapping of keyword arguments, got {getattr(self, name)!r}"
                )
        for name in ("num_train_seeds", "num_eval_seeds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_seed_start < self.num_train_seeds:
            raise ValueError(
                f"eval_seed_start={self.eval_seed_start} overlaps the train seeds 0..{self.num_train_seeds - 1}"
            )


def run_agent(cfg: AgentRecipeConfig) -> None:
    """Check the model and the env up front, train on the seeds, evaluate on the held-out seeds, save."""
    from rlhf.envs import TEXT_ENVS

    load_model_config(cfg.model_name_or_path, "model_name_or_path", cfg.trust_remote_code)
    factory = partial(TEXT_ENVS[cfg.env], **cfg.env_kwargs)
    eval_factory = partial(factory, **cfg.eval_env_kwargs) if cfg.eval_env_kwargs else None
    for name, make in (("env_kwargs", factory), ("eval_env_kwargs", eval_factory)):
        try:
            make is None or make()
        except TypeError as err:  # a keyword the factory does not take
            raise ValueError(f"{name}: {cfg.env} does not accept them ({err})") from err
    evals = range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.num_eval_seeds)
    train_and_save(
        PPOTrainer(
            cfg.model_name_or_path, None, args=cfg, peft_config=lora_config(cfg), env_factory=factory,
            train_seeds=range(cfg.num_train_seeds), eval_seeds=evals if cfg.eval_steps or cfg.eval_on_start else None,
            eval_env_factory=eval_factory,
        )
    )  # fmt: skip


def train_main(argv: list[str], prog: str = "rlhf train") -> None:
    """`rlhf train`: an agent recipe when the config (YAML or command line) names an `env`, else a prompt one."""
    from classic.cli import exit_on_bad_input, load_yaml, parse_config_or_exit
    from rlhf.train_command import PPORecipeConfig, run_ppo

    config = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    with exit_on_bad_input(prog):
        data = load_yaml(config) if config else {}
    if "--env" in argv or (isinstance(data, dict) and "env" in data):
        run_agent(parse_config_or_exit(AgentRecipeConfig, prog, argv))
    else:
        run_ppo(parse_config_or_exit(PPORecipeConfig, prog, argv))
