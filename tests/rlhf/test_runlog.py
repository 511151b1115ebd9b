"""The run log alone: completions gathered from the ranks only on the steps that write them; metric reduction."""

import json
from types import SimpleNamespace

import torch

from rlhf import runlog
from rlhf.batch import Experience, Rollout, Scores
from rlhf.config import PPOConfig


class FakeAccelerator:
    """Two ranks as seen from rank 0: gather stacks this rank's row twice."""

    num_processes, is_main_process, process_index, trackers = 2, True, 0, []
    device = torch.device("cpu")

    def gather(self, x):
        return torch.cat([x, x + 1])


def rollout() -> Rollout:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ids = torch.ones(2, 3, dtype=torch.long)
    exp = Experience(ids[:, :1], ids[:, :1], ids, mask, mask, torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 2.0]]),
                     torch.zeros(2, 3), torch.tensor([0.5, 1.5]))  # fmt: skip
    scores = Scores(torch.tensor([[0.5, 1.5]]), torch.tensor([0.5, 1.5]), torch.tensor([True, False]))
    return Rollout(exp, scores, ["p", "q"], ["a", "b"])


def test_completions_are_gathered_only_on_the_steps_that_write_them(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runlog, "gather_object", lambda rows: calls.append(len(rows)) or rows + rows)
    args = PPOConfig(output_dir=str(tmp_path), log_completions=True, logging_steps=3, disable_tqdm=True)
    log = runlog.RunLog(FakeAccelerator(), args, initial_step=0)
    for step in range(1, 7):
        log.completions(step, rollout(), ["f"])
    assert calls == [2, 2]  # steps 3 and 6 only: gathering is a collective, once per written step
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3] * 4 + [6] * 4
    # the mean token advantage over real tokens: (1 + 3) / 2 and 2
    assert rows[0] == {"step": 3, "prompt": "p", "completion": "a", "reward/f": 0.5, "reward": 0.5,
                       "advantage": 2.0, "length": 2, "ended_with_eos": True}  # fmt: skip
    assert rows[1]["advantage"] == 2.0 and rows[1]["ended_with_eos"] is False


def test_gather_metrics_reduces_min_max_time_and_mean_over_ranks():
    stats = {"reward": 1.0, "completion_length_min": 2.0, "completion_length_max": 5.0, "time/step": 2.0,
             "generated_tokens": 10.0, "kl": None}  # fmt: skip
    row = runlog.gather_metrics(FakeAccelerator(), stats, step=4)
    # rank 1 reports every value + 1
    assert (
        row["reward"] == 1.5 and row["completion_length_min"] == 2.0 and row["completion_length_max"] == 6.0
    )
    assert row["time/step"] == 3.0 and "kl" not in row
    assert row["generated_tokens"] == 21.0  # the mean (10.5) times 2 ranks
    assert row["tokens_per_s"] == 7.0 and row["step"] == 4


def test_rollout_stats_by_hand():
    r = rollout()
    stats = runlog.rollout_stats(r.experience, r.scores, ["f"], group_size=2)
    assert stats["completion_length"] == 2.5 and stats["eos_fraction"] == 0.5
    assert stats["zero_std_group_fraction"] == 0.0 and stats["reward/f"] == 1.0
    assert SimpleNamespace(**stats).generated_tokens == 5.0
