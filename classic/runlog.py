"""Run directories: a `metrics.jsonl` (one JSON object per line, appended and flushed as training goes; read back
tolerating the torn last line a crash leaves, cut back atomically when a run resumes), a learning-curve PNG drawn
from it (`plot_curves`; `plot_panels` for statistics of different scales), and `explain_full_disk` for saves.
Shared by every classic algorithm and the rlhf trainer; classic runs write a second file of the same kind,
`updates.jsonl`, with one row per update."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Append-only `metrics.jsonl`; each `write` is one line, flushed so a crash loses at most that line."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a" if append else "w")

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl`. A last line that does not parse is what a crash mid-`write` leaves (power
    loss, a full disk): it is dropped with a warning naming the file and line, so the rows before it stay
    usable. A bad line anywhere else is damage nobody should paper over: a ValueError naming file and line."""
    path = Path(path)
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    rows = []
    for k, (number, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if k == len(lines) - 1:
                warnings.warn(
                    f"{path}: line {number} is a torn (incomplete) last row, dropped ({err.msg})",
                    stacklevel=2,
                )
                break
            raise ValueError(
                f"{path}: line {number} is not valid JSON ({err.msg}); the file is damaged"
            ) from None
    return rows


def truncate_metrics(path: str | Path, max_step: int, key: str = "step") -> list[dict[str, Any]]:
    """Keep the rows with `row[key] <= max_step` (what a run resumed from the checkpoint of step `max_step`
    has logged), replacing the file atomically: the rows go to a temporary file in the same directory, are
    fsynced and renamed over the original, so a kill at any moment leaves either the old or the new file, never
    a half-written one. A missing file is left missing. Returns the kept rows."""
    path = Path(path)
    if not path.is_file():
        return []
    kept = [r for r in read_metrics(path) if r.get(key, 0) <= max_step]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if os.name == "posix":  # the rename itself is durable once the directory entry is on disk
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return kept


# How a full disk shows up: OSError ENOSPC / EDQUOT, torch.save's RuntimeError "[enforce fail at
# inline_container.cc] unexpected pos N vs M" or "PytorchStreamWriter failed writing file", safetensors' Rust IoError
_FULL_DISK_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_FULL_DISK_TEXT = (
    "unexpected pos",
    "failed writing file",
    "file write failed",
    "No space left",
    "StorageFull",
)


class DiskFullError(OSError):
    """A save failed because the disk (or quota) is full; the message names the file and the free space."""


def _looks_like_full_disk(err: BaseException) -> bool:
    if isinstance(err, OSError) and err.errno in _FULL_DISK_ERRNOS:
        return True
    return isinstance(err, OSError | RuntimeError) and any(t in str(err) for t in _FULL_DISK_TEXT)


def _free_space(path: Path) -> str:
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        usage = shutil.disk_usage(existing)
    except OSError:
        return "free space unknown"
    return f"{_size(usage.free)} free of {_size(usage.total)} on {existing}'s file system"


def _size(n_bytes: float) -> str:
    """A byte count in the largest binary unit it fills: '512 B', '1.0 MiB', '300 MiB', '4.0 TiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    k = 0
    while n_bytes >= 1024 and k < len(units) - 1:
        n_bytes, k = n_bytes / 1024, k + 1
    return f"{n_bytes:.0f} {units[k]}" if k == 0 or n_bytes >= 100 else f"{n_bytes:.1f} {units[k]}"


def _files(directory: Path | None) -> dict[Path, tuple[int, int]]:
    if directory is None or not directory.is_dir():
        return {}
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in directory.iterdir() if p.is_file()}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def explain_full_disk(
    target: str | Path, partial: Iterable[str | Path] = (), written_dir: str | Path | None = None
) -> Iterator[None]:
    """Around a save of `target` (the file or directory named in the error). If the block fails, nothing it
    half-wrote is left to be mistaken for a complete save: the `partial` paths (temporary files or directories)
    are removed, and so is every file the block created or changed in `written_dir` (a directory it writes
    into directly, like save_pretrained; the directory too if the block created it). A full disk (see
    `_looks_like_full_disk`: torch's own message says nothing about space) is then re-raised as a one-line
    DiskFullError naming `target` and the free space; any other error as it was."""
    target = Path(target)
    written = Path(written_dir) if written_dir is not None else None
    existed = written is not None and written.is_dir()
    before = _files(written)
    try:
        yield
    except BaseException as err:
        for path in partial:
            _remove(Path(path))
        for path, state in _files(written).items():
            if before.get(path) != state:
                path.unlink(missing_ok=True)
        if written is not None and not existed:
            shutil.rmtree(written, ignore_errors=True)
        if not _looks_like_full_disk(err):
            raise
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise DiskFullError(
            f"could not save {target}: the disk is probably full ({_free_space(target)}); free some space or "
            f"choose another output directory, then save again ({type(err).__name__}: {first_line})"
        ) from err


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(
    path: str | Path,
    rows: list[dict[str, Any]],
    x: str,
    ys: list[str],
    title: str,
    ylabel: str,
    smooth: int = 1,
    labels: list[str] | None = None,
) -> Path:
    """Line plot of columns `ys` against `x` from metrics rows (rows missing a column are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, y in enumerate(ys):
        pts = [(r[x], r[y]) for r in rows if y in r and x in r and r[y] is not None and math.isfinite(r[y])]
        if not pts:
            continue
        xs, vals = zip(*pts)
        label = labels[i] if labels else y
        if smooth > 1:
            ax.plot(xs, vals, alpha=0.25, color=f"C{i}")
            vals = moving_average(list(vals), smooth)
            label += f" (moving avg {smooth})"
        ax.plot(xs, vals, label=label, color=f"C{i}")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_panels(
    path: str | Path, rows: list[dict[str, Any]], x: str, ys: list[str], title: str, smooth: int = 1
) -> Path:
    """One small panel per column of `ys` against `x`, in a grid of up to 3 columns: the per-update statistics
    (losses, entropy, KL, clip fraction, ...) differ by orders of magnitude, so one shared y axis would flatten
    all but the largest. Columns with no finite value get no panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for y in ys:
        pts = [(r[x], r[y]) for r in rows if y in r and x in r and r[y] is not None and math.isfinite(r[y])]
        if pts:
            series.append((y, *zip(*pts)))
    ncols = max(1, min(3, len(series)))
    nrows = max(1, math.ceil(len(series) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.6 * nrows), dpi=110, squeeze=False)
    for ax in axes.flat[len(series) :]:
        ax.set_visible(False)
    for ax, (y, xs, vals) in zip(axes.flat, series):
        if smooth > 1:
            ax.plot(xs, vals, alpha=0.25, color="C0")
            vals = moving_average(list(vals), smooth)
        ax.plot(xs, vals, color="C0", marker="o" if len(xs) == 1 else None)  # one row: a dot, not nothing
        ax.set_title(y + (f" (moving avg {smooth})" if smooth > 1 else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[: len(series)]):
        if i + ncols >= len(series):  # the lowest panel of its grid column
            ax.set_xlabel(x.replace("_", " "), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
