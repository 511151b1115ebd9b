"""What the peer-vs-ours benchmarks share: worker processes that build one trainer and run one step per "step" line
on stdin (each with its own peak RSS), the lines they answer with, and the machine's matmul peak."""

from __future__ import annotations

import json
import resource
import subprocess
import time

import torch


def emit(obj: dict) -> None:
    """A worker's answer: one JSON line the parent can find among the libraries' own output."""
    print("@@" + json.dumps(obj), flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def matmul_peak_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    """Best of a few fp32 n x n matmuls, in GFLOP/s, with the same thread count as the workers."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


class Worker:
    """The parent's handle on one worker process: `step()` runs one measured step, `finish()` reads its peak RSS."""

    def __init__(self, name: str, command: list[str], env: dict, cwd: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd
        )
        self.rows: list[dict] = []
        self.peak_rss_mb = float("nan")

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        raise RuntimeError(f"worker {self.name} exited with code {self.proc.wait()} (see its stderr above)")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def step(self) -> None:
        self.send("step")
        self.rows.append(self.read())

    def finish(self) -> None:
        self.send("quit")
        self.peak_rss_mb = self.read()["peak_rss_mb"]
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
