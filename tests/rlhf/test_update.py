"""The update does not depend on how the optimizer step's batch is cut into microbatches, and equals the loss
formulas written out by hand. (Processes: test_ddp.py runs the same case on two.)"""

import pytest
import torch

from tests.rlhf import split_case as case

CASES = [("gae", "dapo"), ("grpo", "dapo"), ("grpo", "grpo"), ("grpo", "dr_grpo")]


EPISODE_CASES = [
    ("gae", "dapo"),
    ("grpo", "dapo"),
]  # the same cases as multi-turn episodes (case.as_episodes)


def one_step(tmp_path, estimator, loss_type, micro, episodes=False):
    trainer = case.trainer(
        tmp_path / f"{estimator}-{loss_type}-{micro}-{episodes}", estimator, loss_type, micro
    )
    acc = trainer.accelerator
    policy = acc.unwrap_model(trainer.policy)
    critic = acc.unwrap_model(trainer.critic) if trainer.critic is not None else None
    exp = case.experience(policy, critic)
    exp = case.as_episodes(exp) if episodes else exp
    before = case.weights(trainer)
    reference = case.reference_step(policy, critic, exp, trainer.args)
    old_style = case.reference_step(policy, critic, exp, trainer.args, per_microbatch_mean=True)
    stats = trainer.update(exp)
    after = case.weights(trainer)
    return {k: after[k] - before[k] for k in before}, reference, old_style, stats


@pytest.mark.parametrize(("estimator", "loss_type"), CASES)
def test_one_step_is_the_same_for_every_micro_batch_size_and_equals_the_formula(
    tmp_path, estimator, loss_type
):
    results = {micro: one_step(tmp_path, estimator, loss_type, micro) for micro in (1, 2, case.BATCH)}
    _, reference, _, _ = results[case.BATCH]
    for micro, (delta, _, old_style, stats) in results.items():
        for name, expected in reference.items():
            torch.testing.assert_close(
                delta[name], expected, rtol=1e-4, atol=1e-6, msg=f"micro={micro} {name}"
            )
        if micro < case.BATCH and loss_type == "dapo":
            # a token mean per microbatch, averaged (the old normalisation), changes the update: the case can
            # see the difference (for grpo's per-sequence mean and dr_grpo's constant, equal-sized microbatches
            # happen to give the same average)
            name = "policy.transformer.wte.weight"
            assert not torch.allclose(old_style[name], reference[name], rtol=1e-2, atol=1e-5)
        # the logged statistics are split-invariant too
        for key in ("policy_loss", "clip_fraction", "approx_kl", "entropy"):
            assert stats[key] == pytest.approx(results[case.BATCH][3][key], rel=1e-4, abs=1e-7), (micro, key)
    stats = results[1][3]
    assert 0 < stats["clip_fraction_low"] < 1 and 0 < stats["clip_fraction_high"] < 1  # clipping acts
    assert stats["clip_fraction"] == pytest.approx(stats["clip_fraction_low"] + stats["clip_fraction_high"])
    if estimator == "grpo":
        assert stats["kl_loss"] > 0
    else:
        assert stats["value_loss"] > 0 and "critic_grad_norm" in stats


@pytest.mark.parametrize(("estimator", "loss_type"), EPISODE_CASES)
def test_a_multi_turn_step_is_the_same_for_every_micro_batch_size_and_equals_the_formula(
    tmp_path, estimator, loss_type
):
    """Episodes: observation tokens are out of the loss and of its denominator (the formula's mask is the action
    mask), however the step's batch is cut."""
    results = {
        micro: one_step(tmp_path, estimator, loss_type, micro, episodes=True) for micro in (1, 2, case.BATCH)
    }
    _, reference, _, _ = results[case.BATCH]
    for micro, (delta, _, _, stats) in results.items():
        for name, expected in reference.items():
            torch.testing.assert_close(
                delta[name], expected, rtol=1e-4, atol=1e-6, msg=f"micro={micro} {name}"
            )
        for key in ("policy_loss", "clip_fraction", "approx_kl", "entropy"):
            assert stats[key] == pytest.approx(results[case.BATCH][3][key], rel=1e-4, abs=1e-7), (micro, key)
    # and the episode masks change the update (the case sees the observation tokens)
    single = one_step(tmp_path / "single", estimator, loss_type, case.BATCH)[1]
    name = "policy.transformer.wte.weight"
    assert not torch.allclose(single[name], reference[name], rtol=1e-2, atol=1e-6)
