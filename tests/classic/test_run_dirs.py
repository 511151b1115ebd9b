"""A classic run directory is never silently overwritten: a second run into a finished run's output_dir is refused
before any work (one line naming the directory and --overwrite), the first run's files stay byte-identical, and
`overwrite=True` replaces the run. An empty, absent or unrelated directory is used as before."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from classic import a2c, dqn, ppo, reinforce

REPO = Path(__file__).resolve().parents[2]

# the smallest run each algorithm makes that writes every run file (config, metrics, updates, model, plots)
TINY = {
    "ppo": (ppo, ppo.PPOConfig, dict(total_timesteps=64, num_envs=2, num_steps=32, mini_batch_size=32, num_ppo_epochs=1)),
    "a2c": (a2c, a2c.A2CConfig, dict(total_timesteps=40, num_envs=2, num_steps=5)),
    "dqn": (dqn, dqn.DQNConfig, dict(total_timesteps=120, learning_starts=50, hidden_sizes=[8], log_interval=5)),
    "reinforce": (reinforce, reinforce.ReinforceConfig, dict(total_timesteps=150, episodes_per_batch=1)),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("RLBOOK_NO_PROGRESS", "1")
    torch.set_num_threads(1)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("algo", sorted(TINY))
def test_a_second_run_into_a_finished_runs_directory_is_refused_and_changes_nothing(algo, tmp_path):
    module, config_cls, tiny = TINY[algo]
    out = tmp_path / "run"
    module.train(config_cls(seed=1, output_dir=str(out), **tiny))
    before = snapshot(out)
    assert {"config.json", "metrics.jsonl", "updates.jsonl", "model.pt"} <= set(before)
    with pytest.raises(
        FileExistsError, match=r"output_dir='.*run' already holds a run \(.*config\.json.*--overwrite"
    ):
        module.train(config_cls(seed=2, output_dir=str(out), **tiny))
    assert snapshot(out) == before
    # overwrite: the second run's config and model replace the first's, and they load together
    result = module.train(
        config_cls(seed=2, output_dir=str(out), overwrite=True, **{**tiny, "hidden_sizes": [16]})
    )
    assert '"seed": 2' in (out / "config.json").read_text()
    assert result.run_dir == out
    module.load(out)


@pytest.mark.parametrize("algo", sorted(TINY))
def test_an_empty_or_unrelated_directory_is_used_as_before(algo, tmp_path):
    module, config_cls, tiny = TINY[algo]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("mine")
    for name in ("empty", "notes", "absent"):
        module.train(config_cls(seed=1, output_dir=str(tmp_path / name), **tiny))
        assert (tmp_path / name / "model.pt").is_file()
    assert (tmp_path / "notes" / "README.txt").read_text() == "mine"


def cli(algo, *argv, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLBOOK_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", f"classic.{algo}", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("algo", sorted(TINY))
def test_every_cli_refuses_a_used_output_dir_in_one_line(algo, tmp_path):
    module, config_cls, tiny = TINY[algo]
    out = tmp_path / "run"
    module.train(config_cls(seed=1, output_dir=str(out), **tiny))
    before = snapshot(out)
    argv = [a for k, v in tiny.items() for a in (f"--{k}", str(v))]
    proc = cli(algo, *argv, "--seed", "2", "--output_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        f"python -m classic.{algo}: error: output_dir={str(out)!r} already holds a run"
    )
    assert "--overwrite" in lines[0]
    assert snapshot(out) == before


def test_the_cli_overwrites_when_asked(tmp_path):
    out = tmp_path / "run"
    argv = ["--total_timesteps", "64", "--num_envs", "2", "--num_steps", "32", "--mini_batch_size", "32"]
    argv += ["--num_ppo_epochs", "1", "--output_dir", str(out)]
    first = cli("ppo", *argv, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    third = cli("ppo", *argv, "--seed", "2", "--overwrite", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert '"seed": 2' in (out / "config.json").read_text()
