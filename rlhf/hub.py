"""Fail fast and clearly when a model id or path cannot be loaded (before any training starts)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or os.sep in name
        and Path(name).parent.exists()
    )


def load_model_config(
    name_or_path: str, field: str = "model_name_or_path", trust_remote_code: bool = False
) -> PretrainedConfig:
    """Load the config of a Hub id or local path, raising an error that names `field` and says what to do:
    a missing local directory, a directory without config.json, or a Hub id that cannot be reached (offline).
    A GGUF file's config is read from its metadata (rlhf/gguf.py)."""
    path = Path(name_or_path).expanduser()
    if str(path).lower().endswith(".gguf"):
        from rlhf.gguf import load_gguf_config

        return load_gguf_config(path, field=field)
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{field}={name_or_path!r}: the directory exists but has no config.json; expected a directory "
                "written by save_pretrained()"
            )
    elif _looks_like_path(name_or_path):
        raise FileNotFoundError(f"{field}={name_or_path!r}: no such local path")
    try:
        return AutoConfig.from_pretrained(
            str(path) if path.exists() else name_or_path, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        offline = (
            os.environ.get("HF_HUB_OFFLINE") == "1"
            or "connect" in str(err).lower()
            or "offline" in str(err).lower()
        )
        reason = (
            "this machine cannot reach the Hugging Face Hub (offline) and the model is not in the local cache"
            if offline
            else "not found as a local path nor as a Hub model id"
        )
        raise OSError(
            f"{field}={name_or_path!r} could not be loaded: {reason}. Download it on a connected machine "
            f"(e.g. `huggingface-cli download {name_or_path} --local-dir ./{Path(name_or_path).name}`) and pass "
            "the local directory instead."
            + (
                f" If {name_or_path!r} is meant as a local directory: it does not exist (relative to {Path.cwd()})."
                if "/" in name_or_path
                else ""
            )
        ) from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise ValueError(
                f"{field}={name_or_path!r} needs custom code from the Hub; set trust_remote_code=True only if you "
                "trust its author"
            ) from err
        raise
