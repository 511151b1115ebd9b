"""`benchmarks/rlhf_step.py --quick` runs end to end (tiny models, ours grpo vs TRL GRPO) and prints the table."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_quick_prints_the_ratio_table():
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "rlhf_step.py"),
        "--quick",
        "--steps",
        "1",
        "--warmup",
        "0",
    ]
    command += ["--trainers", "grpo,trl_grpo"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "fp32 matmul peak" in out and "ratios ours / TRL" in out, out
    for name in ("ours grpo", "trl_grpo"):
        row = next(line for line in out.splitlines() if line.startswith(name))
        numbers = [float(x) for x in re.findall(r"\d+\.\d+|\d+", row.split(name, 1)[1])]
        assert len(numbers) >= 9 and all(math.isfinite(x) and x >= 0 for x in numbers), row
    ratio = next(line for line in out.splitlines() if line.startswith("ours grpo") and "/ trl_grpo" in line)
    ratios = [float(x) for x in re.findall(r"\d+\.\d+", ratio.split("/ trl_grpo", 1)[1])][:5]  # then targets
    assert len(ratios) == 5 and all(math.isfinite(r) and r > 0 for r in ratios), ratio


def test_sampler_benchmark_quick_prints_both_rows_and_the_ratio():
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "sampler.py"),
        "--quick",
        "--reps",
        "1",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in ("sample", "unshared", "generate"):
        row = next(line for line in lines if line.startswith(name + " "))
        numbers = [float(x) for x in row.split()[1:]]
        assert len(numbers) == 4 and all(math.isfinite(x) and x > 0 for x in numbers), row
        assert numbers[3] <= 8.0  # mean completion length <= --new-tokens of the quick size
    ratio = float(next(line for line in lines if line.startswith("ratio sample")).split(":")[1])
    assert math.isfinite(ratio) and ratio > 0
    assert next(line for line in lines if line.startswith("ratio unshared"))
