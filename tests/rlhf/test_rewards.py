"""Reward functions as TRL users write them: numpy and tensor outputs, async functions, a timeout."""

import asyncio
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.rewards import compute_rewards, reward_names

PROMPTS, COMPLETIONS = ["p", "q", "r"], ["a", "bb", "ccc"]


def run(funcs, timeout=None):
    return compute_rewards(
        funcs, PROMPTS, COMPLETIONS, {}, prompt_indices=[0, 1, 2], timeout=timeout
    ).tolist()


@pytest.mark.parametrize(
    "output",
    [
        np.array([1.0, 2.0, 3.0]),
        np.array([1, 2, 3], dtype=np.int64),
        [np.float32(1.0), np.float64(2.0), np.int32(3)],
        torch.tensor([1.0, 2.0, 3.0]),
        [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)],
        (1, 2.0, 3),
    ],
    ids=["ndarray", "int-ndarray", "numpy-scalars", "tensor", "0d-tensors", "tuple"],
)
def test_numpy_and_tensor_outputs_are_rewards(output):
    def reward(prompts, completions, **kw):
        return output

    assert run([reward]) == [[1.0, 2.0, 3.0]]


def test_booleans_are_still_refused():
    def flags(prompts, completions, **kw):
        return np.array([True, False, True])

    with pytest.raises(TypeError, match="'flags' returned True at index 0"):
        run([flags])


def test_async_reward_functions_run_concurrently_next_to_plain_ones():
    async def slow_length(prompts, completions, **kw):
        await asyncio.sleep(0.5)
        return [len(c) for c in completions]

    async def slow_double(prompts, completions, **kw):
        await asyncio.sleep(0.5)
        return [2 * len(c) for c in completions]

    def plain(prompts, completions, **kw):
        return [0.5] * len(completions)

    t0 = time.perf_counter()
    assert run([slow_length, plain, slow_double]) == [[1, 2, 3], [0.5] * 3, [2, 4, 6]]
    assert time.perf_counter() - t0 < 0.9  # both 0.5 s sleeps overlapped


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_a_hung_reward_function_times_out_with_its_name(kind):
    def hangs(prompts, completions, **kw):
        time.sleep(3)
        return [0.0] * len(completions)

    async def hangs_async(prompts, completions, **kw):
        await asyncio.sleep(3)
        return [0.0] * len(completions)

    func = hangs if kind == "plain" else hangs_async
    t0 = time.perf_counter()
    with pytest.raises(
        RuntimeError,
        match=rf"reward function '{func.__name__}' raised TimeoutError: did not return within reward_timeout=0.2 s \(dataset rows \[0, 1, 2\]\)",
    ):
        run([func], timeout=0.2)
    assert time.perf_counter() - t0 < 1.5


ROOT = Path(__file__).resolve().parents[2]

# a reward function that never returns, behind a 1 s timeout; the script then lets the error end the process
_HUNG_SCORE = """
import time
from rlhf.rewards import compute_rewards

def never_returns(prompts, completions, **kw):
    time.sleep(10**6)

print("calling", flush=True)
compute_rewards([never_returns], ["p"], ["a"], {}, timeout=1)
"""

_HUNG_TRAIN = """
import sys, time
import datasets, torch
from rlhf import PPOConfig, PPOTrainer
from rlhf.tiny import build_causal_lm, build_tokenizer

torch.set_num_threads(1)
tokenizer = build_tokenizer(["the cat sat on the mat", "a dog ran in the park"] * 20, vocab_size=300)

def never_returns(prompts, completions, **columns):
    time.sleep(10**6)

args = PPOConfig(
    output_dir=sys.argv[1], max_steps=2, rollout_batch_size=2, mini_batch_size=2, micro_batch_size=2,
    max_new_tokens=4, advantage_estimator="reinforce_pp", reward_timeout=1, disable_tqdm=True,
    plot_metrics=False,
)
dataset = datasets.Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(8)]})
PPOTrainer(build_causal_lm(tokenizer), never_returns, args, dataset, processing_class=tokenizer).train()
"""


def _run_script(script, *argv, timeout):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the process did not exit within {timeout} s of starting (stderr: {err.stderr!r})")
    return proc, time.perf_counter() - t0


def test_a_hung_sync_reward_function_does_not_keep_the_process_alive():
    """The timed-out call's thread is never joined at interpreter exit: the process ends with the error."""
    proc, elapsed = _run_script(_HUNG_SCORE, timeout=60)
    assert proc.returncode != 0
    assert "did not return within reward_timeout=1 s" in proc.stderr
    assert elapsed < 45, elapsed


def test_a_training_run_with_a_hung_reward_function_stops_at_the_timeout(tmp_path):
    proc, elapsed = _run_script(_HUNG_TRAIN, str(tmp_path / "run"), timeout=120)
    assert proc.returncode != 0
    expected = "reward function 'never_returns' raised TimeoutError: did not return within reward_timeout=1 s"
    assert expected in proc.stderr


def _length(prompts, completions, scale=1.0, **kw):
    return [scale * len(c) for c in completions]


def test_reward_names_are_distinct_so_no_metric_overwrites_another():
    """Two lambdas, two partials of one function: each gets its own `reward/<name>` key, in list order."""
    funcs = [
        lambda prompts, completions, **kw: [0.0] * len(completions),
        functools.partial(_length, scale=2.0),
        lambda prompts, completions, **kw: [1.0] * len(completions),
        functools.partial(_length, scale=3.0),
        _length,
        lambda prompts, completions, **kw: [2.0] * len(completions),
    ]
    assert reward_names(funcs) == [
        "<lambda>",
        "_length",
        "<lambda>_2",
        "_length_2",
        "_length_3",
        "<lambda>_3",
    ]
    assert reward_names([_length]) == ["_length"]


def test_reward_names_never_reuse_a_name_a_function_already_has():
    def _length_2(prompts, completions, **kw):
        return [0.0] * len(completions)

    names = reward_names([_length_2, _length, _length, _length_2])
    assert len(set(names)) == 4
    assert names[:2] == ["_length_2", "_length"]
