"""What every deep-RL file in `classic/` needs besides its algorithm: input checks, seeding, environments,
the run directory (metrics.jsonl, updates.jsonl, their plots, saved model) and a progress bar. Kept small on
purpose."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from classic.cli import config_from_saved, exit_on_bad_input
from classic.runlog import MetricsWriter, explain_full_disk, plot_curves, plot_panels, read_metrics

# renames every classic config shares (to the names rlhf.config.PPOConfig uses), for their `RENAMED` maps
RENAMED_RUN_FIELDS = {"run_dir": "output_dir", "torch_threads": "num_threads"}


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_unit_interval(name: str, value: float) -> None:
    """Discounts, lambdas, probabilities: a value in [0, 1] (NaN fails too)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_hidden_sizes(name: str, sizes: list[int]) -> None:
    """MLP layer widths: every entry a positive integer (an empty list is a linear model)."""
    if any(not size > 0 for size in sizes):
        raise ValueError(f"{name}: every layer size must be a positive integer, got {list(sizes)!r}")


def check_env_id(env_id: str) -> None:
    # importing classic.envs registers the project's own environments
    import classic.envs  # noqa: F401

    if env_id not in gym.registry:
        close = [k for k in gym.registry if env_id.split("-")[0].lower() in k.lower()][:5]
        hint = f" Similar ids: {close}." if close else ""
        if env_id.startswith("ALE/"):  # registered by ale-py, which gymnasium does not install by default
            hint += ' Atari ids (ALE/...) need ale-py: pip install "gymnasium[atari]", then import ale_py.'
        raise ValueError(f"unknown env_id {env_id!r}: not a registered gymnasium id.{hint}")


def read_run_config(cls: type, run_dir: str | Path) -> Any:
    """The config a run saved in `run_dir/config.json` (old field names translated, `config_from_saved`), for the
    algorithms' `load`: a missing directory or file, or a damaged one, is one line naming it."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory '{run_dir}' does not exist")
    if not path.is_file():
        raise FileNotFoundError(
            f"run directory '{run_dir}' has no config.json: not a run directory, or its run has not started"
        )
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"run config '{path}' is damaged: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"run config '{path}' is not a JSON object of field: value (got {type(values).__name__})"
        )
    return config_from_saved(cls, values, source=str(path))


def seed_everything(seed: int, num_threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


def make_vec_env(
    env_id: str, num_envs: int, seed: int, wrappers: list | None = None, **env_kwargs: Any
) -> gym.vector.SyncVectorEnv:
    """`num_envs` copies in one process, auto-reset in the *same* step so that `infos["final_obs"]` holds the
    true last observation of a truncated episode (needed to bootstrap through time limits)."""
    check_env_id(env_id)
    check_positive("num_envs", num_envs)

    def thunk() -> gym.Env:
        env = gym.make(env_id, **env_kwargs)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        for wrapper in wrappers or []:
            env = wrapper(env)
        return env

    envs = gym.vector.SyncVectorEnv(
        [thunk for _ in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    return envs


def finished_episodes(infos: dict) -> list[tuple[float, int]]:
    """(return, length) of every episode that ended in this vector step (RecordEpisodeStatistics; with
    same-step auto-reset the statistics sit under `infos["final_info"]`)."""
    infos = infos.get("final_info", infos)
    if "episode" not in infos:
        return []
    stats = infos["episode"]
    return [(float(stats["r"][i]), int(stats["l"][i])) for i in np.flatnonzero(stats["_r"])]


# the updates.jsonl columns updates.png draws, where a run has them: the ones that say whether training is
# healthy (each panel costs ~0.05 s of matplotlib at the end of the run, so not the schedules or the clock)
PLOTTED_UPDATE_COLUMNS = (
    "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance", "epochs",
    "loss", "q_values", "epsilon",
)  # fmt: skip


# what a classic run writes into its directory (`Run`): a directory holding any of them holds a run, and
# `overwrite` removes exactly these and save_model's temporary file (anything else kept there stays)
RUN_FILES = ("config.json", "metrics.jsonl", "updates.jsonl", "model.pt", "curve.png", "updates.png")


def check_output_dir(output_dir: str | Path, overwrite: bool) -> None:
    """A run into a directory that holds another run's files is refused unless `overwrite`: its config.json
    and metrics would be rewritten at the start, and a killed second run would leave run 1's model.pt next to
    run 2's config.json. An absent or empty directory, or one without run files, is fine."""
    out = Path(output_dir)
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if found and not overwrite:
        raise FileExistsError(
            f"output_dir={str(output_dir)!r} already holds a run ({', '.join(found)}); pass --overwrite "
            "(overwrite=True) to replace it, or choose another --output_dir"
        )


def prepare_output_dir(output_dir: str | Path, overwrite: bool) -> Path:
    """Before any work: `check_output_dir`, then with `overwrite` the earlier run's files are removed, so none of
    them can outlive the new run (a stale model.pt or curve.png next to the new config.json)."""
    check_output_dir(output_dir, overwrite)
    out = Path(output_dir)
    if overwrite:
        for name in (*RUN_FILES, "model.pt.tmp"):
            (out / name).unlink(missing_ok=True)
    return out


def exit_if_output_dir_used(prog: str, output_dir: str | Path, overwrite: bool) -> None:
    """`check_output_dir` for a script's `__main__`: a used directory is one line and exit status 2."""
    with exit_on_bad_input(prog):
        check_output_dir(output_dir, overwrite)


class Run:
    """A run directory: `config.json`, `metrics.jsonl` (one row per finished training episode), `curve.png`,
    `updates.jsonl` (one row per update: the algorithm's losses and diagnostics), `updates.png`, `model.pt`,
    with a progress bar over environment steps. Two files rather than one: every reader of metrics.jsonl
    (first_solved_step, curve.png) can keep assuming that a row is an episode."""

    def __init__(self, run_dir: str | Path, config: Any, total_steps: int, desc: str) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
        self.metrics = MetricsWriter(self.dir / "metrics.jsonl")
        # opened (truncated) now, not at the first update: a stale file of an earlier run in the same
        # directory must not survive a run that never updates
        self.updates = MetricsWriter(self.dir / "updates.jsonl")
        self.returns: list[float] = []
        self.start = time.time()
        disable = os.environ.get("RLBOOK_NO_PROGRESS") == "1"
        self.bar = tqdm(total=total_steps, desc=desc, unit="step", disable=disable, leave=False)
        self.title = desc

    def episode(self, global_step: int, episode_return: float, episode_length: int, **extra: float) -> None:
        self.returns.append(episode_return)
        self.metrics.write(
            {
                "global_step": global_step,
                "episode_return": episode_return,
                "episode_length": episode_length,
                "time": round(time.time() - self.start, 3),
                **extra,
            }
        )
        recent = self.returns[-20:]
        self.bar.set_postfix(ret20=f"{sum(recent) / len(recent):.1f}")

    def update(self, global_step: int, iteration: int, **stats: float) -> None:
        """One updates.jsonl row: the statistics of the update made after `global_step` environment steps,
        plus `steps_per_s` (environment steps per wall-clock second since the run started, CleanRL's SPS)."""
        elapsed = time.time() - self.start
        self.updates.write(
            {
                "global_step": global_step,
                "iteration": iteration,
                **stats,
                "steps_per_s": round(global_step / elapsed, 1) if elapsed > 0 else None,
                "time": round(elapsed, 3),
            }
        )

    def step(self, n: int) -> None:
        self.bar.update(n)

    def mean_recent_return(self, window: int = 20) -> float:
        recent = self.returns[-window:]
        return sum(recent) / len(recent) if recent else float("-inf")

    def close(self, model: torch.nn.Module | None = None) -> None:
        self.bar.close()
        self.metrics.close()
        self.updates.close()
        if model is not None:
            save_model(model, self.dir / "model.pt")
        rows = read_metrics(self.dir / "metrics.jsonl")
        if rows:
            plot_curves(
                self.dir / "curve.png",
                rows,
                "global_step",
                ["episode_return"],
                self.title,
                "episode return",
                10,
            )
        updates = read_metrics(self.dir / "updates.jsonl")
        if updates:
            columns = [k for k in PLOTTED_UPDATE_COLUMNS if k in updates[0]]
            # a column that never changes (every epoch run, no target_kl stop) would be a flat panel
            varying = [k for k in columns if len({r.get(k) for r in updates}) > 1] or columns
            smooth = 5 if len(updates) >= 20 else 1
            plot_panels(
                self.dir / "updates.png", updates, "global_step", varying, f"{self.title}: updates", smooth
            )


def save_model(model: torch.nn.Module, path: str | Path) -> None:
    """Atomic: write to a temporary file, then rename, so a crash never leaves a half-written model (and a
    full disk is one line naming the file, with the temporary file removed)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with explain_full_disk(path, partial=[tmp]):
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)


def load_model(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (EOFError, OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as err:
        if "Weights only load failed" in str(err):  # not damage: a file with arbitrary pickled objects
            raise ValueError(
                f"model file '{path}' holds objects other than tensors; refusing to load it"
            ) from err
        # what torch says about a cut-off or damaged file: EOFError (empty), "failed finding central directory",
        # OSError [Errno 22], a KeyError from the unpickler: none of them names the file or the cause
        detail = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"model file '{path}' is truncated or corrupt ({path.stat().st_size} bytes; "
            f"{type(err).__name__}: {detail}); re-train or re-save it"
        ) from err
    model.load_state_dict(state)
    return model


def layer_init(layer: torch.nn.Module, std: float = 2**0.5, bias_const: float = 0.0) -> torch.nn.Module:
    """Orthogonal init (the "37 implementation details of PPO", detail 2)."""
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer
