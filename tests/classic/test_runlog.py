"""metrics.jsonl survives crashes: a torn last line is dropped with a warning, a damaged middle line is an error
naming file and line, and truncating to a checkpoint's step replaces the file atomically."""

import json
import re

import pytest

from classic import runlog
from classic.runlog import MetricsWriter, read_metrics, truncate_metrics


def write_rows(path, steps):
    writer = MetricsWriter(path)
    for s in steps:
        writer.write({"step": s, "reward": s / 10})
    writer.close()


def test_torn_last_line_is_dropped_with_one_warning_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [1, 2])
    with path.open("a") as f:
        f.write('{"step": 3, "rew')  # what a power loss in the middle of a write leaves
    with pytest.warns(
        UserWarning, match=rf"{re.escape(str(path))}: line 3 is a torn \(incomplete\) last row, dropped"
    ) as caught:
        rows = read_metrics(path)
    assert len(caught) == 1
    assert rows == [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}]


def test_damaged_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(
        ValueError, match=rf"^{re.escape(str(path))}: line 2 is not valid JSON .*the file is damaged$"
    ):
        read_metrics(path)


def test_truncate_keeps_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [1, 2, 3, 4])
    with path.open("a") as f:
        f.write('{"step": 5, "rew')
    with pytest.warns(UserWarning, match="line 5 is a torn"):
        kept = truncate_metrics(path, 2)
    assert [r["step"] for r in kept] == [1, 2]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == [] and not (tmp_path / "missing.jsonl").exists()


def test_a_kill_during_the_rewrite_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_rows(path, [1, 2, 3, 4])
    before = path.read_text()
    real_dumps, calls = json.dumps, {"n": 0}

    def killed_on_the_second_row(obj, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(runlog.json, "dumps", killed_on_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        truncate_metrics(path, 3)
    monkeypatch.undo()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
