"""Run directories: a `metrics.jsonl` (one JSON object per line, appended and flushed as training goes) and a
learning-curve PNG drawn from it. Shared by every classic algorithm and the rlhf trainer."""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
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
