from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest

from classic.cli import _help_text, config_from_saved, parse_config


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


@dataclass
class Renamed:
    RENAMED: ClassVar[dict[str, str]] = {"base_lr": "learning_rate", "anneal": "schedule"}
    learning_rate: float = field(default=3e-4, metadata={"help": "learning rate"})
    schedule: Literal["linear", "constant"] = field(default="linear", metadata={"help": "lr schedule"})

    @staticmethod
    def upgrade_saved(values):
        if isinstance(values.get("anneal"), bool):  # the old field was a bool
            values["anneal"] = "linear" if values["anneal"] else "constant"
        return values


def test_renamed_key_in_yaml_or_on_the_command_line_names_the_new_one(tmp_path):
    y = tmp_path / "old.yaml"
    y.write_text("base_lr: 1.0e-3\n")
    moved = r"^config key 'base_lr' was renamed to 'learning_rate' \("
    with pytest.raises(ValueError, match=moved + ".*old.yaml"):
        parse_config(Renamed, ["--config", str(y)])
    for argv in (["--base-lr", "1"], ["--base_lr", "1"], ["--base-lr=1"]):  # both spellings
        with pytest.raises(ValueError, match=moved + "command line"):
            parse_config(Renamed, argv)
    y.write_text("learning_rate: 1.0e-3\n")  # a good file and an old flag: the message names the flag
    with pytest.raises(ValueError, match=moved + "command line"):
        parse_config(Renamed, ["--config", str(y), "--base_lr", "1"])
    for flag in ("--anneal", "--anneal=false"):  # a bare flag and one with a value
        with pytest.raises(ValueError, match=r"^config key 'anneal' was renamed to 'schedule' \("):
            parse_config(Renamed, [flag])
    cfg = parse_config(Renamed, ["--learning-rate", "0.1", "--schedule", "constant"])
    assert cfg == Renamed(0.1, "constant")
    assert "renamed (the old names are errors): base_lr -> learning_rate, anneal -> schedule" in (
        _help_text(Renamed)
    )
    with pytest.raises(ValueError, match="unknown key"):  # Cfg declares no RENAMED: the plain error
        parse_config(Cfg, ["--learning_rate", "1"])


def test_saved_config_with_old_keys_is_translated():
    assert config_from_saved(Renamed, {"base_lr": 0.5, "anneal": False}) == Renamed(0.5, "constant")
    assert config_from_saved(Cfg, {"lr": 0.5}) == Cfg(lr=0.5)  # no RENAMED, no upgrade_saved: as is
    with pytest.raises(ValueError, match="both 'base_lr' and its new name 'learning_rate'"):
        config_from_saved(Renamed, {"base_lr": 0.5, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="unknown key"):
        config_from_saved(Renamed, {"lrr": 0.5})


def test_a_missing_required_field_is_one_line_naming_it(tmp_path):
    @dataclass
    class Needs:
        model: str = field(metadata={"help": "which model"})
        steps: int = field(default=1, metadata={"help": "steps"})

    with pytest.raises(ValueError, match=r"command line: missing required field\(s\) model for Needs: set "):
        parse_config(Needs, ["--steps", "2"])
    y = tmp_path / "c.yaml"
    y.write_text("steps: 3\n")
    with pytest.raises(ValueError, match=r"c.yaml: missing required field\(s\) model .*--model"):
        parse_config(Needs, ["--config", str(y)])
    assert parse_config(Needs, ["--model", "m"]).model == "m"
