"""Every classic config refuses out-of-range numbers in __post_init__ with a message naming the field, and the
`python -m classic.<algo>` entry points turn a bad config into one line on stderr and exit status 2."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from classic.a2c import A2CConfig
from classic.cli import parse_config
from classic.dqn import DQNConfig
from classic.ppo import PPOConfig
from classic.reinforce import ReinforceConfig
from classic.tabular.__main__ import MazeDemoConfig

REPO = Path(__file__).resolve().parents[2]
DEEP = [ReinforceConfig, DQNConfig, PPOConfig, A2CConfig]
UNIT = r"must be in \[0, 1\], got "

BAD = [
    # (config classes, command-line override, message)
    (DEEP + [MazeDemoConfig], ["--gamma", "1.5"], r"^gamma " + UNIT + "1.5$"),
    (DEEP + [MazeDemoConfig], ["--gamma", "-0.1"], r"^gamma " + UNIT + "-0.1$"),
    (
        DEEP,
        ["--hidden_sizes", "64,0"],
        r"^hidden_sizes: every layer size must be a positive integer, got \[64, 0\]$",
    ),
    (
        DEEP,
        ["--hidden_sizes", "[-8]"],
        r"^hidden_sizes: every layer size must be a positive integer, got \[-8\]$",
    ),
    (DEEP, ["--learning_rate", "0"], "^learning_rate must be positive, got 0.0$"),
    (DEEP, ["--max_grad_norm", "-1"], "^max_grad_norm must be positive, got -1.0$"),
    (DEEP, ["--num_threads", "0"], "^num_threads must be positive, got 0$"),
    ([PPOConfig, A2CConfig], ["--gae_lambda", "1.2"], "^gae_lambda " + UNIT + "1.2$"),
    ([PPOConfig, A2CConfig], ["--entropy_coef", "-0.01"], "^entropy_coef must be >= 0, got -0.01$"),
    ([PPOConfig, A2CConfig], ["--vf_coef", "-1"], "^vf_coef must be >= 0, got -1.0$"),
    ([PPOConfig], ["--clip_eps", "0"], "^clip_eps must be positive, got 0.0$"),
    ([PPOConfig], ["--adam_eps", "0"], "^adam_eps must be positive, got 0.0$"),
    ([PPOConfig], ["--target_kl", "0"], "^target_kl must be positive, got 0.0$"),
    ([A2CConfig], ["--rms_alpha", "1.5"], "^rms_alpha " + UNIT + "1.5$"),
    ([A2CConfig], ["--optim_eps", "0"], "^optim_eps must be positive, got 0.0$"),
    ([DQNConfig], ["--start_e", "1.5"], "^start_e " + UNIT + "1.5$"),
    ([DQNConfig], ["--end_e", "-0.1"], "^end_e " + UNIT + "-0.1$"),
    ([DQNConfig], ["--learning_starts", "-1"], "^learning_starts must be >= 0, got -1$"),
    ([ReinforceConfig], ["--value_learning_rate", "0"], "^value_learning_rate must be positive, got 0.0$"),
    ([MazeDemoConfig], ["--loop_fraction", "2"], "^loop_fraction " + UNIT + "2.0$"),
    ([MazeDemoConfig], ["--size", "0"], "^size must be positive, got 0$"),
]
CASES = [(cls, argv, message) for classes, argv, message in BAD for cls in classes]


@pytest.mark.parametrize(("cls", "argv", "message"), CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_out_of_range_setting_names_the_field(cls, argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(cls, argv)


@pytest.mark.parametrize("cls", DEEP + [MazeDemoConfig])
def test_defaults_pass_the_checks(cls):
    assert parse_config(cls, []) == cls()


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH: this checkout's code, whatever the cwd (the test runs in an empty tmp dir)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLBOOK_NO_PROGRESS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_classic_entry_point_bad_config_is_one_line_and_exit_status_2(tmp_path):
    result = run_module(
        "classic.reinforce", "--gamma", "1.5", "--output_dir", str(tmp_path / "run"), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == "python -m classic.reinforce: error: gamma must be in [0, 1], got 1.5\n"
    assert not (tmp_path / "run").exists()
    result = run_module("classic.reinforce", "--gama", "0.9", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert re.match(
        r"^python -m classic.reinforce: error: command line: unknown key\(s\) \['gama'\] .*valid keys are: ",
        result.stderr,
    )
    result = run_module("classic.tabular", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        f"python -m classic.tabular: error: config file '{tmp_path / 'missing.yaml'}' does not exist\n",
    )
