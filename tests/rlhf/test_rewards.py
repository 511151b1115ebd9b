"""Reward functions as TRL users write them: numpy and tensor outputs, async functions, a timeout."""

import asyncio
import time

import numpy as np
import pytest
import torch

from rlhf.rewards import compute_rewards

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
