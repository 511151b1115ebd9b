"""Config dataclasses from YAML files and `--field value` command-line overrides.

One function, `parse_config(ConfigClass, argv)`, used by every `python -m classic.<algo>` entry point, by the
rlhf trainer config and by the recipes:

    python -m classic.ppo --env_id CartPole-v1 --seed 3
    accelerate launch recipes/ppo.py --config recipes/gpt2_imdb.yaml --learning_rate 1e-6

Each field's help text is `field(metadata={"help": ...})`. Unknown keys (in YAML or on the command line) are
errors that list the valid ones; values are converted to the field's type and a failed conversion names the field.
`--field-name` and `--field_name` are the same key.

Renamed fields: a config class may declare `RENAMED: ClassVar[dict[str, str]] = {"old_name": "new_name"}`. In
user input (YAML, command line) an old name is an error that names its replacement, not just one more unknown
key: the user is editing that input and should move to the new name. A run directory's saved `config.json` is
different: it was valid when it was written and nobody edits it, so `config_from_saved` translates old names
(and, through the class's optional `upgrade_saved(values)`, old values whose type changed with the rename) and
runs saved before a rename still load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
import typing
from collections.abc import Iterator
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
        # a list field names its item type (list[int]): "expected list, got [2.5]" would not say what is wrong
        expected = (
            typing.get_args(tp)
            if origin is typing.Literal
            else (str(tp) if origin else getattr(tp, "__name__", str(tp)))
        )
        raise ValueError(f"config field '{name}': expected {expected}, got {value!r}") from None
    return value


def _renamed(cls: type) -> dict[str, str]:
    return dict(getattr(cls, "RENAMED", None) or {})


def _reject_renamed(cls: type, keys: Any, source: str) -> None:
    renamed, fields = _renamed(cls), {f.name for f in dataclasses.fields(cls)}
    old = [k for k in keys if k in renamed and k not in fields]
    if old:
        moves = "; ".join(f"config key '{k}' was renamed to '{renamed[k]}'" for k in old)
        raise ValueError(f"{moves} ({source}; see --help for the new field's meaning)")


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a dict, converting types; unknown keys raise a ValueError listing the valid ones, and
    a key in `cls.RENAMED` one that names its new name."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    _reject_renamed(cls, unknown, source)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; valid keys are: {', '.join(sorted(fields))}"
        )
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    missing = [name for name in required if name not in values]
    if missing:  # one line, not the dataclass's TypeError
        raise ValueError(
            f"{source}: missing required field(s) {', '.join(missing)} for {cls.__name__}: set them in a YAML file "
            f"(--config recipe.yaml) or on the command line ({' '.join(f'--{m} ...' for m in missing)})"
        )
    kwargs = {k: _convert(k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def config_from_saved(cls: type[T], values: dict[str, Any], source: str = "saved config") -> T:
    """Build `cls` from a config saved by an earlier run (its `config.json`): keys in `cls.RENAMED` are
    translated to their new names instead of being errors. If the class has `upgrade_saved(values) -> values`,
    it runs first, on the old names, to translate values whose type changed with the rename."""
    upgrade = getattr(cls, "upgrade_saved", None)
    values = dict(values) if upgrade is None else upgrade(dict(values))
    renamed, out = _renamed(cls), {}
    for key, value in values.items():
        new = renamed.get(key, key)
        if new != key and new in values:
            raise ValueError(f"{source}: has both '{key}' and its new name '{new}'")
        out[new] = value
    return config_from_dict(cls, out, source)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file '{path}' does not exist")
    try:
        with path.open() as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        # yaml's own message spans several lines and quotes the file; one line with the place is enough
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"config file '{path}' is not valid YAML ({where}{problem})") from None
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
    renamed = _renamed(cls)
    if renamed:
        lines.append(
            "renamed (the old names are errors): " + ", ".join(f"{k} -> {v}" for k, v in renamed.items())
        )
    return "\n".join(lines)


def parse_config(cls: type[T], argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> T:
    """`--config file.yaml` (optional) then `--field value` overrides, into dataclass `cls`.

    Precedence: dataclass defaults < `defaults` < YAML file < command line."""
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
        from_yaml = load_yaml(known.config)
        _reject_renamed(cls, from_yaml, known.config)  # here, not after merging: name the file it came from
        values.update(from_yaml)
    from_command_line: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected command-line argument {arg!r}: expected --field value")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            values_after = []
            while i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                values_after.append(rest[i + 1])
                i += 1
            # a bare --flag sets a bool field; several values (--models a=x b=y) make a list, as in a YAML list
            val = "true" if not values_after else values_after[0] if len(values_after) == 1 else values_after
        from_command_line[key] = val
        i += 1
    _reject_renamed(cls, from_command_line, "command line")
    values.update(from_command_line)
    # an unknown key is blamed on where it came from: the command line if it has one, else the YAML file
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    source = "command line" if set(from_command_line) - fields else known.config or "command line"
    return config_from_dict(cls, values, source=source)


@contextlib.contextmanager
def exit_on_bad_input(prog: str) -> Iterator[None]:
    """Around an entry point's checks of its input (config parsing and validation, before any work): a
    ValueError or OSError (FileNotFoundError for a missing config file, FileExistsError for a finished run)
    becomes one line on stderr, `prog: error: message`, and exit status 2, like argparse's own usage errors.
    The message already says what to fix; a traceback would bury it. Errors raised later (during training) are
    left alone: those are worth a traceback."""
    try:
        yield
    except (ValueError, OSError) as err:
        message = " ".join(line.strip() for line in str(err).splitlines())  # one line, even if it wraps
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_config_or_exit(cls: type[T], prog: str, argv: list[str] | None = None) -> T:
    """`parse_config` for a script's `__main__`: bad input exits with one line and status 2 (exit_on_bad_input)."""
    with exit_on_bad_input(prog):
        return parse_config(cls, argv)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
