from dataclasses import dataclass, field
from typing import Literal

import pytest

from classic.cli import parse_config


@dataclass
class Cfg:
    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium id"})
    lr: float = field(default=3e-4, metadata={"help": "learning rate"})
    steps: int = field(default=100, metadata={"help": "steps"})
    anneal: bool = field(default=True, metadata={"help": "anneal"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "mode"})
    target: float | None = field(default=None, metadata={"help": "optional"})
    layers: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "sizes"})


def test_yaml_then_command_line(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 1.0e-3\nsteps: 7\nlayers: [8, 8]\n")
    cfg = parse_config(
        Cfg, ["--config", str(y), "--steps", "9", "--anneal", "false", "--target=0.5", "--mode", "b"]
    )
    assert (cfg.lr, cfg.steps, cfg.anneal, cfg.target, cfg.mode, cfg.layers) == (
        1e-3,
        9,
        False,
        0.5,
        "b",
        [8, 8],
    )
    assert parse_config(Cfg, ["--layers", "1,2"]).layers == [1, 2]
    assert parse_config(Cfg, ["--steps", "1e3"]).steps == 1000


def test_unknown_and_bad_values_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stepz'\].*valid keys are: .*steps"):
        parse_config(Cfg, ["--stepz", "3"])
    with pytest.raises(ValueError, match="'steps': expected int"):
        parse_config(Cfg, ["--steps", "many"])
    with pytest.raises(ValueError, match="'mode'"):
        parse_config(Cfg, ["--mode", "c"])
    y = tmp_path / "bad.yaml"
    y.write_text("learning_rat: 1\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown key"):
        parse_config(Cfg, ["--config", str(y)])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse_config(Cfg, ["--config", str(tmp_path / "missing.yaml")])
