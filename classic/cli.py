"""Config dataclasses from YAML files and `--field value` command-line overrides.

One function, `parse_config(ConfigClass, argv)`, used by every `python -m classic.<algo>` entry point, by the
rlhf trainer config and by the recipes:

    python -m classic.ppo --env_id CartPole-v1 --seed 3
    accelerate launch recipes/ppo.py --config recipes/gpt2_imdb.yaml --learning_rate 1e-6

Each field's help text is `field(metadata={"help": ...})`. Unknown keys (in YAML or on the command line) are
errors that list the valid ones; values are converted to the field's type and a failed conversion names the field.
`--field-name` and `--field_name` are the same key.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(name: str, value: Any, tp: Any) -> Any:
    """Convert `value` (a YAML value or a command-line string) to type `tp`, or raise naming the field."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ValueError(f"config field '{name}' may not be None (expected {getattr(tp, '__name__', tp)})")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if not isinstance(value, str | int | float):
                raise ValueError
            return str(value)
        if origin is typing.Literal:
            if value not in typing.get_args(tp):
                raise ValueError
            return value
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(tp) or (Any,)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.startswith("[") else [v for v in value.split(",") if v]
            if not isinstance(value, list | tuple):
                raise ValueError
            items = [v if item_tp is Any else _convert(name, v, item_tp) for v in value]
            return items if origin is list else tuple(items)
        if origin is dict or tp is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (TypeError, ValueError):
        expected = typing.get_args(tp) if origin is typing.Literal else getattr(tp, "__name__", str(tp))
        raise ValueError(f"config field '{name}': expected {expected}, got {value!r}") from None
    return value


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a dict, converting types; unknown keys raise a ValueError listing the valid ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys are: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _convert(k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file '{path}': expected a mapping of field: value, got {type(data).__name__}"
        )
    return data


def _help_text(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        lines.append(f"  --{f.name} {tp} [default: {default}]\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_config(cls: type[T], argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> T:
    """`--config file.yaml` (optional) then `--field value` overrides, into dataclass `cls`.

    Precedence: dataclass defaults < `defaults` < YAML file < command line."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=(cls.__doc__ or "").strip().split("\n")[0],
        epilog="fields:\n" + _help_text(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file of field: value pairs")
    known, rest = parser.parse_known_args(argv)
    values: dict[str, Any] = dict(defaults or {})
    if known.config:
        values.update(load_yaml(known.config))
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected command-line argument {arg!r}: expected --field value")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                val = rest[i + 1]
                i += 1
            else:
                val = "true"  # a bare --flag sets a bool field
        values[key] = val
        i += 1
    return config_from_dict(cls, values, source=known.config or "command line")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
