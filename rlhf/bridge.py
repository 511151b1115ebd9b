"""The textbook and the language model on the same environment.

    rlhf bridge --models base=path/to/model trained=runs/frozenlake_agent [--num_maps 20] [--output_dir runs/bridge]

For FrozenLake maps drawn from held-out seeds (`generate_random_map(size, seed)`), each map's success rate for:
the optimal policy (`classic` value iteration on the map), tabular Q-learning trained on that map, a uniformly
random policy, and each language model (greedy, in text: `rlhf.envs.make_frozenlake(map_seed=...)`). The LM plays
the text env whose `.unwrapped` is the very FrozenLakeEnv object the tabular methods solve. Writes bridge.json,
bridge.md (the table) and bridge.png (the plot) to output_dir.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class BridgeConfig:
    """Which maps, which policies, how many episodes."""

    models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "language models as name=path (a model folder, a GGUF file or a saved LoRA adapter)"
        },
    )
    size: int = field(default=4, metadata={"help": "map side (4 or 8 are gymnasium's sizes; any >= 2 works)"})
    is_slippery: bool = field(default=False, metadata={"help": "slippery ice (stochastic moves)"})
    map_seed_start: int = field(
        default=1000, metadata={"help": "maps from seeds map_seed_start, ... (held out)"}
    )
    num_maps: int = field(default=20, metadata={"help": "how many maps"})
    q_episodes: int = field(default=3000, metadata={"help": "Q-learning's training episodes per map"})
    eval_episodes: int = field(default=20, metadata={"help": "episodes per map for the stochastic policies"})
    neighbours: bool = field(
        default=False,
        metadata={
            "help": "observations also name what lies one move away, as make_frozenlake(neighbours=True): play the "
            "models with the observations they were trained on"
        },
    )
    max_turns: int = field(default=12, metadata={"help": "the language model's replies per episode"})
    max_new_tokens: int = field(default=8, metadata={"help": "tokens per reply"})
    history_turns: int | None = field(
        default=None,
        metadata={
            "help": "what each reply reads, as PPOConfig.history_turns: None the whole dialogue, k the last k turns "
            "(0: the current observation only); play the models with the window they were trained with"
        },
    )
    seed: int = field(default=0, metadata={"help": "Q-learning's and the random policy's seed"})
    output_dir: str = field(default="runs/bridge", metadata={"help": "where bridge.json / .md / .png go"})

    def __post_init__(self) -> None:
        for name in ("size", "num_maps", "q_episodes", "eval_episodes", "max_turns", "max_new_tokens"):
            if getattr(self, name) < (2 if name == "size" else 1):
                raise ValueError(f"{name} must be positive (size >= 2), got {getattr(self, name)}")
        for spec in self.models:
            if "=" not in spec or not spec.split("=", 1)[0]:
                raise ValueError(f"models: expected name=path, got {spec!r}")


def _episode_success(env: Any, act: Any, seed: int) -> bool:
    """One episode of `act(state) -> action` on a tabular env; True when it ends with a positive reward."""
    state, _ = env.reset(seed=seed)
    for _ in range(1000):
        state, reward, terminated, truncated, _ = env.step(int(act(state)))
        if terminated or truncated:
            return bool(terminated and reward > 0)
    return False


def tabular_success_rates(env: Any, cfg: BridgeConfig) -> dict[str, float]:
    """Optimal (value iteration), Q-learning and random success rates on one FrozenLakeEnv."""
    from classic.tabular import q_learning, value_iteration

    rng = np.random.default_rng(cfg.seed)
    _, optimal = value_iteration(env, gamma=0.99)
    q = q_learning(env, cfg.q_episodes, alpha=0.5, gamma=0.99, epsilon=0.2, seed=cfg.seed, progress=False).Q
    episodes = range(cfg.eval_episodes)
    rate = lambda act: float(np.mean([_episode_success(env, act, cfg.seed + i) for i in episodes]))  # noqa: E731
    return {
        "optimal": rate(lambda s: optimal[s]),
        "q_learning": rate(lambda s: np.argmax(q[s])),
        "random": rate(lambda s: rng.integers(env.action_space.n)),
    }


def load_lm(path: str) -> tuple[torch.nn.Module, Any]:
    """A causal LM and its tokenizer from a folder, a GGUF file or a saved LoRA adapter (merged for speed)."""
    from rlhf.build import load_tokenizer
    from rlhf.models import load_policy

    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32).merge_and_unload()
    else:
        model = load_policy(path, False, field="models")
    tokenizer = load_tokenizer(path, model, None)
    return model.eval(), tokenizer


@torch.no_grad()
def lm_success(model: torch.nn.Module, tokenizer: Any, envs: list[Any], cfg: BridgeConfig) -> list[bool]:
    """Greedy episodes of the LM on each text env (one per map); success per map."""
    from rlhf.episodes import run_episodes
    from rlhf.prompts import context_window
    from rlhf.rollout import Generator

    generator = Generator(cfg.max_new_tokens, 0.0, tokenizer.eos_token_id, tokenizer.pad_token_id)
    generator.sync_weights(model)
    window = context_window(model.config) or 2**31
    batch = run_episodes(
        generator, tokenizer, envs, [0] * len(envs), cfg.max_turns, window, history_turns=cfg.history_turns
    )
    return [bool(d["success"]) for d in batch.dialogues]


def run_bridge(cfg: BridgeConfig) -> dict[str, Any]:
    """Every policy on every map; the per-map and mean success rates (also written to output_dir)."""
    from rlhf.envs import make_frozenlake

    seeds = list(range(cfg.map_seed_start, cfg.map_seed_start + cfg.num_maps))
    envs = [
        make_frozenlake(cfg.size, cfg.is_slippery, map_seed=s, map_in_prompt=True, neighbours=cfg.neighbours)
        for s in seeds
    ]
    rows = [{"map_seed": s, **tabular_success_rates(e.unwrapped, cfg)} for s, e in zip(seeds, envs)]
    for spec in cfg.models:
        name, path = spec.split("=", 1)
        model, tokenizer = load_lm(path)
        for row, ok in zip(rows, lm_success(model, tokenizer, envs, cfg)):
            row[name] = float(ok)
    columns = [k for k in rows[0] if k != "map_seed"]
    result = {
        "config": asdict(cfg),
        "maps": rows,
        "mean": {c: float(np.mean([r[c] for r in rows])) for c in columns},
    }
    write_bridge(Path(cfg.output_dir), result)
    return result


def write_bridge(out: Path, result: dict[str, Any]) -> None:
    """bridge.json, bridge.md (the table) and bridge.png (mean success per policy)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bridge.json").write_text(json.dumps(result, indent=1))
    mean, cfg = result["mean"], result["config"]
    lines = [
        f"FrozenLake {cfg['size']}x{cfg['size']} ({'slippery' if cfg['is_slippery'] else 'not slippery'}), "
        f"{cfg['num_maps']} maps from seeds {cfg['map_seed_start']}..{cfg['map_seed_start'] + cfg['num_maps'] - 1}",
        "",
        "| policy | success rate |",
        "|---|---|",
        *(f"| {name} | {value:.3f} |" for name, value in mean.items()),
    ]
    (out / "bridge.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(mean), list(mean.values()), color="tab:blue")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (held-out maps)")
    ax.set_title(lines[0], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bridge.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from classic.cli import parse_config_or_exit

    cfg = parse_config_or_exit(BridgeConfig, "rlhf bridge", argv)
    result = run_bridge(cfg)
    print((Path(cfg.output_dir) / "bridge.md").read_text())
    print(f"written: {Path(cfg.output_dir) / 'bridge.json'}, bridge.md, bridge.png")
    del result


if __name__ == "__main__":
    main()
