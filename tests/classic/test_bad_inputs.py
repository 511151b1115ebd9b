"""Bad input a user meets with the classic scripts is one line naming the file or the id and what was expected,
not a traceback from yaml, json or gymnasium: a YAML syntax error, a damaged or missing run directory passed to
`load`, an Atari id without its extra installed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from classic import a2c, dqn, ppo, reinforce
from classic.cli import parse_config
from classic.common import check_env_id

REPO = Path(__file__).resolve().parents[2]
LOADERS = {"ppo": ppo.load, "a2c": a2c.load, "dqn": dqn.load, "reinforce": reinforce.load}


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 3\nenv_id: CartPole-v1\nhidden_sizes: [64, 64\nlearning_rate: 1e-3\n")
    with pytest.raises(
        ValueError, match=rf"^config file '{bad}' is not valid YAML \(line \d+, column \d+: .+\)$"
    ):
        parse_config(ppo.PPOConfig, ["--config", str(bad)])


def test_the_cli_reports_a_yaml_syntax_error_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 3\n  gamma: 0.9\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLBOOK_NO_PROGRESS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "classic.ppo", "--config", str(bad), "--output_dir", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(
        f"python -m classic.ppo: error: config file '{bad}' is not valid YAML (line 2"
    )
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algo", sorted(LOADERS))
def test_load_of_a_missing_run_dir_says_so(algo, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=rf"^run directory '{missing}' does not exist$"):
        LOADERS[algo](missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^run directory '.*empty' has no config.json: not a run"):
        LOADERS[algo](tmp_path / "empty")


@pytest.mark.parametrize("algo", sorted(LOADERS))
@pytest.mark.parametrize(
    "text", ['{"env_id": "CartPole-v1", "seed"', "", "[1, 2]"], ids=["cut", "empty", "list"]
)
def test_load_of_a_damaged_config_json_names_the_file(algo, text, tmp_path):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(
        ValueError, match=rf"^run config '{tmp_path / 'config.json'}' is (damaged|not a JSON object)"
    ):
        LOADERS[algo](tmp_path)


def test_an_atari_id_says_which_extra_registers_it():
    with pytest.raises(ValueError) as err:
        check_env_id("ALE/Pong-v5")
    message = str(err.value)
    assert message.startswith("unknown env_id 'ALE/Pong-v5': not a registered gymnasium id.")
    assert 'pip install "gymnasium[atari]"' in message and "ale_py" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="gymnasium.atari"):
        ppo.PPOConfig(env_id="ALE/Breakout-v5")
