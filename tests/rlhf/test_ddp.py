"""Two processes on CPU (gloo), launched as users launch them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_do_equal_work_and_stay_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(WORKER),
        str(tmp_path),
        "gae",
        "grpo",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for estimator in ("gae", "grpo"):
        check_run(tmp_path / estimator)
    check_split_case(tmp_path)
    check_step_groups(tmp_path)
    ranks = [json.loads((tmp_path / f"eval-rank{r}.json").read_text()) for r in (0, 1)]
    timing = {"time/eval"}  # each rank's own
    assert {k: v for k, v in ranks[0]["metrics"].items() if k not in timing} == {
        k: v for k, v in ranks[1]["metrics"].items() if k not in timing
    }  # every rank returns the all-rank metrics
    assert ranks[0]["metrics"]["eval/reward/count_good"] == pytest.approx(ranks[0]["count_good"], abs=1e-6)


def check_step_groups(out):
    """gigpo's step groups span the ranks: each rank's half of the by-hand batch gets what one process computes
    on all of it (groups 11 and 22 have one reply on each rank)."""
    from safetensors.torch import load_file

    from rlhf.advantages import step_group_advantages
    from tests.rlhf.test_episodes import STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, STEP_STATES

    halves = [load_file(str(out / f"step-groups-rank{r}.safetensors"))["step"] for r in (0, 1)]
    whole = step_group_advantages(STEP_ACTIONS, STEP_ENDS, STEP_REWARDS, STEP_STATES, 0.5)
    torch.testing.assert_close(torch.cat(halves), whole)
    assert whole.abs().sum() > 0


def check_split_case(out):
    """Two processes, each on its half of the global batch, make the update one process makes on all of it."""
    from safetensors.torch import load_file

    from tests.rlhf import split_case as case
    from tests.rlhf.test_update import CASES, EPISODE_CASES

    for estimator, loss_type, episodes in [
        *((*c, False) for c in CASES),
        *((*c, True) for c in EPISODE_CASES),
    ]:
        trainer = case.trainer(out / "single", estimator, loss_type, micro=case.BATCH)
        acc = trainer.accelerator
        critic = acc.unwrap_model(trainer.critic) if trainer.critic is not None else None
        policy = acc.unwrap_model(trainer.policy)
        exp = case.experience(policy, critic)
        exp = case.as_episodes(exp) if episodes else exp
        reference = case.reference_step(policy, critic, exp, trainer.args)
        tag = f"{'episodes-' if episodes else ''}{estimator}-{loss_type}"
        ranks = [load_file(str(out / f"split-{tag}-rank{r}.safetensors")) for r in range(2)]
        for name, expected in reference.items():
            torch.testing.assert_close(
                ranks[0][name], expected, rtol=1e-4, atol=1e-6, msg=f"{estimator} {name}"
            )
            assert torch.equal(ranks[0][name], ranks[1][name]), name


def check_run(run_dir):
    ranks = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # the ranks saw disjoint prompts (each rank its own shard), 2 steps x 4 prompts each
    p0, p1 = set(ranks[0]["prompts"]), set(ranks[1]["prompts"])
    assert len(p0) == len(p1) == 8 and not p0 & p1
    assert ranks[0]["weights_equal_across_ranks"] and ranks[1]["weights_equal_across_ranks"]
    # metrics are reduced across ranks, so both ranks log the same numbers
    assert ranks[0]["history"][-1]["reward"] == ranks[1]["history"][-1]["reward"]
    # the adaptive KL controller moves on the all-rank KL: both ranks hold the same beta, and it moved
    assert ranks[0]["kl_coef"] == ranks[1]["kl_coef"] != 0.1
    assert [r["kl_coef"] for r in ranks[0]["history"]] == [r["kl_coef"] for r in ranks[1]["history"]]
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-1",
        "checkpoint-2",
    ]
    assert {f"rng_state_{r}.pt" for r in range(2)} <= {p.name for p in (run_dir / "checkpoint-2").iterdir()}


def test_a_stalled_rank_is_named_instead_of_a_silent_hang(tmp_path):
    """Rank 1 never returns from its reward function: with ddp_timeout=5 the run stops within seconds, and the
    error names the stalled rank and the phase (torch's default would wait 30 minutes without a word)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, str(WORKER.with_name("hang_worker.py")), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "rank 0/2: not every rank finished 'generate + score' in time (ddp_timeout=5 s" in proc.stderr
    assert "Rank 1 failed to pass monitoredBarrier" in proc.stderr
    assert elapsed < 120, elapsed  # the sleeping rank is not waited for
