"""PPO with a critic and GRPO under DDP, FSDP2, ZeRO-2 and ZeRO-3, 2 CPU processes launched as users launch
them: after the same steps from the same seed, the saved policy (and critic) equal the DDP run's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("engine_worker.py")
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {
    "ddp": ["--multi_gpu"],
    "fsdp": ["--config_file", str(ROOT / "recipes/accelerate/fsdp2.yaml")],
    "zero2": ["--config_file", str(ROOT / "recipes/accelerate/deepspeed_zero2.yaml")],
    "zero3": ["--config_file", str(ROOT / "recipes/accelerate/deepspeed_zero3.yaml")],
}


def launch(engine: str, out: Path, estimators=("gae", "grpo", "resume", "env_gae", "env_markov")) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *CONFIGS[engine], "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(WORKER), str(out)]
    proc = subprocess.run([*cmd, *estimators], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch("ddp", out, ("gae", "grpo", "env_gae", "env_markov"))
    return out


def weights(run: Path, estimator: str, tag: str = "") -> dict[str, torch.Tensor]:
    final = run / estimator / f"final{tag}"
    state = {f"policy.{k}": v for k, v in load_file(str(final / "model.safetensors")).items()}
    if (final / "critic").is_dir():
        state.update(
            {f"critic.{k}": v for k, v in load_file(str(final / "critic" / "critic.safetensors")).items()}
        )
    return state


@pytest.mark.parametrize("engine", ["fsdp", "zero3", pytest.param("zero2", marks=pytest.mark.slow)])
def test_engine_trains_the_same_weights_as_ddp(tmp_path, ddp_run, engine):
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is in the dev extra: pip install -e '.[dev]'")
    launch(engine, tmp_path)
    for estimator in ("gae", "grpo"):
        result = json.loads((tmp_path / estimator / "result.json").read_text())
        assert result["engine"] == engine and result["world"] == 2
        reference = json.loads((ddp_run / estimator / "result.json").read_text())
        assert reference["engine"] == "ddp"
        expected, got = weights(ddp_run, estimator), weights(tmp_path, estimator)
        assert got.keys() == expected.keys() and any(k.startswith("critic.") for k in got) == (
            estimator == "gae"
        )
        for name, value in expected.items():
            torch.testing.assert_close(
                got[name], value, rtol=1e-4, atol=1e-5, msg=f"{engine} {estimator} {name}"
            )
        # the same completions and rewards: both runs sampled the same tokens
        for a, b in zip(result["history"], reference["history"]):
            assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)
            assert a["policy_loss"] == pytest.approx(b["policy_loss"], rel=1e-3, abs=1e-6)
        # evaluation with the policy gathered and the reward model sharded: the same greedy completions
        last, last_ddp = result["history"][-1], reference["history"][-1]
        for key in ("eval/reward", "eval/reward/count_good", "eval/completion_length"):
            assert last[key] == pytest.approx(last_ddp[key], abs=1e-5), key
    check_resume(tmp_path)
    check_env_run(tmp_path, ddp_run)


def check_env_run(run: Path, ddp_run: Path) -> None:
    """Multi-turn episodes (a critic, the KV cache over the turns, sharded generation and evaluation), as one
    sequence per episode and as one row per turn (history_turns 0): the same weights and episode metrics as
    under DDP."""
    for name in ("env_gae", "env_markov"):
        expected, got = weights(ddp_run, name), weights(run, name)
        assert got.keys() == expected.keys() and any(k.startswith("critic.") for k in got)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
        result = json.loads((run / name / "result.json").read_text())
        reference = json.loads((ddp_run / name / "result.json").read_text())
        assert len(result["history"]) == len(reference["history"]) == 2
        for a, b in zip(result["history"], reference["history"]):
            for key in ("episode_return", "episode_turns", "invalid_action_fraction", "eval/episode_turns"):
                if key in b:
                    assert a[key] == pytest.approx(b[key], abs=1e-6), (name, key)


def check_resume(run: Path) -> None:
    """3 steps straight == 2 steps, a checkpoint, a crash in step 3, a new trainer resumed from the checkpoint
    (gae: policy and critic, their optimizers and schedulers, every rank's RNG); bitwise on CPU."""
    straight, resumed = weights(run, "straight"), weights(run, "crashed", "-resumed")
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    history = json.loads((run / "crashed" / "result-resumed.json").read_text())["history"]
    assert [row["step"] for row in history] == [3]  # only the third step ran after the resume


def test_watchdog_reports_the_time_it_really_waited(monkeypatch):
    """A peer that dies makes the barrier fail at once, with torch saying it waited the whole timeout ('in
    1800000 ms'): the message gives the real time and says the rank died; a real timeout says so too."""
    import re
    import time
    from datetime import timedelta

    from rlhf.engines import Watchdog

    watchdog = Watchdog.__new__(Watchdog)  # a 2-rank watchdog without a process group
    watchdog.rank, watchdog.world, watchdog.group = 0, 2, None
    watchdog.timeout = timedelta(seconds=1800)

    def peer_died(**kw):
        raise RuntimeError("Rank 1 failed to pass monitoredBarrier in 1800000 ms")

    monkeypatch.setattr(torch.distributed, "monitored_barrier", peer_died)
    with pytest.raises(RuntimeError) as died:
        watchdog.check_in("generate + score")
    message = str(died.value)
    assert "1800000 ms" not in message and "Rank 1 failed to pass monitoredBarrier" in message
    assert re.match(
        r"rank 0/2: not every rank finished 'generate \+ score' \(a rank failed after 0\.\d s, before "
        r"ddp_timeout=1800 s: it died or closed its connection\)",
        message,
    ), message
    with (
        pytest.raises(RuntimeError, match=r"'update' did not complete \(a rank failed after 0\.\d s, before"),
        watchdog.phase("update"),
    ):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:29500")

    def times_out(**kw):
        time.sleep(0.3)
        raise RuntimeError("Rank 1 failed to pass monitoredBarrier in 300 ms")

    watchdog.timeout = timedelta(seconds=0.3)
    monkeypatch.setattr(torch.distributed, "monitored_barrier", times_out)
    with pytest.raises(
        RuntimeError, match=r"'eval' in time \(ddp_timeout=0.3 s, waited 0\.3 s; a rank that stalls"
    ):
        watchdog.check_in("eval")
