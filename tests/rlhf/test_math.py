"""Hand-computed checks of the per-token RLHF math, and that it *is* the classic PPO math."""

import pytest
import torch

from classic import functional as F
from rlhf.advantages import compute_advantages, per_token_rewards
from rlhf.kl import AdaptiveKLController, kl_penalty
from rlhf.rollout import ends_with_eos, position_ids_from_mask, response_mask_from_ids


def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([1.0, -1.0])
    # k3 = exp(ref - logp) - (ref - logp) - 1
    e = torch.e
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([1 / e - (-1) - 1, e - 1 - 1])
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1' or 'k3"):
        kl_penalty(logp, ref, "k2")


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_samples=10)  # error clipped to +0.2 -> beta * (1 + 0.2 * 0.1)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=5.4, n_samples=10)  # error -0.1 -> * (1 - 0.01)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.99)


def test_response_mask_and_eos():
    eos = 0
    ids = torch.tensor([[5, 6, 0, 7, 0], [5, 6, 7, 8, 9], [0, 3, 3, 3, 3]])
    mask = response_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ends_with_eos(ids, mask, eos).tolist() == [True, False, True]
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


def test_per_token_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    r = per_token_rewards(scores, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.25 - 1.0, 0.0, 0.0]]))


def test_gae_on_a_padded_batch_by_hand():
    # row 0 has 2 real tokens, row 1 has 3; gamma 1, lam 0.5, no KL
    scores = torch.tensor([1.0, 2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 99.0], [1.0, 1.0, 1.0]])
    adv, ret = compute_advantages("gae", scores, torch.zeros(2, 3), 0.0, mask, 1, values, gamma=1.0, lam=0.5)
    # row 0: delta_1 = 1 - 0.25 = 0.75; delta_0 = 0 + 0.25 - 0.5 = -0.25; A_0 = -0.25 + 0.5*0.75 = 0.125
    # row 1: delta_2 = 2 - 1 = 1; delta_1 = 0; delta_0 = 0; A_1 = 0.5; A_0 = 0.25
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.75, 0.0], [0.25, 0.5, 1.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.625, 1.0, 0.0], [1.25, 1.5, 2.0]]))


def test_critic_free_estimators_by_hand():
    # 2 prompts x 2 completions, lengths 1,2,2,1; KL 0.2 per token, beta 0.5
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    kl = torch.full((4, 2), 0.2) * mask
    adv, _ = compute_advantages("rloo", scores, kl, 0.5, mask, group_size=2)
    # rloo: [1-3, 3-1, 0, 0] = [-2, 2, 0, 0]; returns-to-go with -0.1 per token
    torch.testing.assert_close(adv, torch.tensor([[-2.1, 0.0], [1.8, 1.9], [-0.2, -0.1], [-0.1, 0.0]]))
    adv, _ = compute_advantages("grpo", scores, torch.zeros(4, 2), 0.0, mask, group_size=2)
    s = 2**0.5  # std of [1, 3] (unbiased)
    torch.testing.assert_close(adv[:2], torch.tensor([[-1 / (s + 1e-4), 0.0], [1 / (s + 1e-4)] * 2]))


def test_one_token_rlhf_loss_equals_classic_loss():
    """A 1-token completion is a 1-step episode: the per-token machinery must reduce to classic PPO."""
    g = torch.Generator().manual_seed(0)
    logprobs, old_logprobs = torch.randn(6, 1, generator=g), torch.randn(6, 1, generator=g)
    scores, values = torch.randn(6, generator=g), torch.randn(6, 1, generator=g)
    mask = torch.ones(6, 1)
    adv, ret = compute_advantages("gae", scores, torch.zeros(6, 1), 0.0, mask, 1, values, gamma=1.0, lam=0.95)
    # classic: one-step episode, A = r - V(s), R = r
    torch.testing.assert_close(adv[:, 0], scores - values[:, 0])
    torch.testing.assert_close(ret[:, 0], scores)
    rlhf_loss = F.ppo_policy_loss(logprobs, old_logprobs, adv, 0.2, mask)[0]
    classic_loss = F.ppo_policy_loss(logprobs[:, 0], old_logprobs[:, 0], scores - values[:, 0], 0.2)[0]
    torch.testing.assert_close(rlhf_loss, classic_loss)
