"""Hand-computed checks of the per-token RLHF math, and that it *is* the classic PPO math."""

import pytest
import torch

from classic import functional as F
from rlhf.advantages import compute_advantages, get_estimator, global_std, per_token_rewards, whiten_tokens
from rlhf.kl import AdaptiveKLController, kl_penalty
from rlhf.losses import LOSS_TYPES, denominator_share, policy_loss, token_weights
from rlhf.rollout import ends_with_eos, position_ids_from_mask, response_mask_from_ids


def test_kl_estimators_by_hand():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-2.0, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([1.0, -1.0])
    # k3 = exp(ref - logp) - (ref - logp) - 1
    e = torch.e
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx([1 / e - (-1) - 1, e - 1 - 1])
    assert (kl_penalty(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    # k2 = 0.5 * (logp - ref)^2
    assert kl_penalty(logp, ref, "k2").tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="'k1', 'k2' or 'k3'"):
        kl_penalty(logp, ref, "k4")


def test_expected_gradients_of_the_kl_estimators_on_policy_samples():
    """Exact expectations over a 4-token vocabulary (no sampling): E_p[grad k1] = 0 whatever the reference (so
    k1 in the loss regularises nothing), E_p[grad k2] = grad KL(p || q), E_p[grad k3] = grad KL(q || p)."""
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5], requires_grad=True)
    ref = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0, 0.2]), dim=0)

    def expected_grad(estimator):
        logp = torch.log_softmax(logits, dim=0)
        # tokens are sampled from p: the sampling weights carry no gradient, the estimator's value does
        (logp.exp().detach() * kl_penalty(logp, ref, estimator)).sum().backward()
        grad, logits.grad = logits.grad.clone(), None
        return grad

    logp = torch.log_softmax(logits, dim=0)
    (logp.exp() * (logp - ref)).sum().backward()  # KL(p || q)
    forward_kl, logits.grad = logits.grad.clone(), None
    logp = torch.log_softmax(logits, dim=0)
    (ref.exp() * (ref - logp)).sum().backward()  # KL(q || p)
    reverse_kl, logits.grad = logits.grad.clone(), None
    torch.testing.assert_close(expected_grad("k1"), torch.zeros(4), atol=1e-7, rtol=0)
    torch.testing.assert_close(expected_grad("k2"), forward_kl)
    torch.testing.assert_close(expected_grad("k3"), reverse_kl)
    assert forward_kl.abs().max() > 0.1  # the references above are not trivially zero


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
    adv, ret = compute_advantages(
        "gae", scores, torch.zeros(2, 3), 0.0, mask, 1, values, gamma=1.0, gae_lambda=0.5, whiten=False
    )
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
    # rloo: [1-3, 3-1, 0, 0] = [-2, 2, 0, 0]; returns-to-go with -0.1 per token; not whitened
    torch.testing.assert_close(adv, torch.tensor([[-2.1, 0.0], [1.8, 1.9], [-0.2, -0.1], [-0.1, 0.0]]))
    adv, _ = compute_advantages("grpo", scores, torch.zeros(4, 2), 0.0, mask, group_size=2)
    s = 2**0.5  # std of [1, 3] (unbiased)
    torch.testing.assert_close(adv[:2], torch.tensor([[-1 / (s + 1e-4), 0.0], [1 / (s + 1e-4)] * 2]))
    # Dr. GRPO: centring only
    adv, _ = compute_advantages(
        "grpo", scores, torch.zeros(4, 2), 0.0, mask, group_size=2, scale_rewards="none"
    )
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))


def test_reinforce_baseline_is_openrlhfs_reinforce_pp_baseline_by_hand():
    """Group mean subtracted from the score, KL rewards added per token, returns-to-go, then whitened over all
    6 real tokens with the population std."""
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    kl = torch.full((4, 2), 0.2) * mask
    adv, returns = compute_advantages("reinforce_baseline", scores, kl, 0.5, mask, group_size=2)
    # centred scores [-1, 1, 0, 0]; per-token reward -0.1; returns-to-go:
    raw = torch.tensor([[-1.1, 0.0], [0.8, 0.9], [-0.2, -0.1], [-0.1, 0.0]])
    torch.testing.assert_close(returns, raw)
    tokens = torch.tensor([-1.1, 0.8, 0.9, -0.2, -0.1, -0.1])
    mean, std = tokens.mean(), tokens.std(unbiased=False)
    torch.testing.assert_close(adv, (raw - mean) / std * mask)
    # REINFORCE++: no baseline at all, one completion per prompt is enough
    adv, returns = compute_advantages("reinforce_pp", scores, kl, 0.5, mask, group_size=1)
    raw = torch.tensor([[0.9, 0.0], [2.8, 2.9], [-0.2, -0.1], [-0.1, 0.0]])
    tokens = raw[mask.bool()]
    torch.testing.assert_close(returns, raw)
    torch.testing.assert_close(adv, (raw - tokens.mean()) / tokens.std(unbiased=False) * mask)


def test_batch_statistics_cover_every_rank():
    """Whitening and scale_rewards='batch' computed on two halves with a reduce that adds the other half's
    statistics equal the statistics of the whole batch on one process."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 2, 4, 1, 3, 5])[:, None]).float()
    whole = whiten_tokens(x, mask)
    tokens = x[mask.bool()]
    torch.testing.assert_close(whole, (x - tokens.mean()) / tokens.std(unbiased=False) * mask)
    halves = []
    for mine, other in ((slice(0, 3), slice(3, 6)), (slice(3, 6), slice(0, 3))):
        other_stats = torch.stack(
            [(x[other] * mask[other]).sum(), (x[other] ** 2 * mask[other]).sum(), mask[other].sum()]
        )
        halves.append(whiten_tokens(x[mine], mask[mine], reduce=lambda t, o=other_stats: t + o))
    torch.testing.assert_close(torch.cat(halves), whole)
    scores = torch.randn(8, generator=g)
    other = scores[4:]
    reduce = lambda t: t + torch.stack([other.sum(), (other**2).sum(), torch.tensor(4.0)])  # noqa: E731
    torch.testing.assert_close(global_std(scores[:4], reduce), scores.std())
    assert get_estimator("grpo").min_group_size == 2 and get_estimator("gae").needs_critic


def test_loss_type_normalisers_by_hand():
    """Two completions of 1 and 3 tokens (T = 4), per-token losses [a] and [b, c, d]."""
    a, b, c, d = 1.0, 2.0, 4.0, 6.0
    per_token = torch.tensor([[a, 0.0, 0.0, 0.0], [b, c, d, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])

    def loss(loss_type, max_new_tokens=4):
        weights = token_weights(mask, loss_type)
        return ((per_token * weights).sum() / denominator_share(mask, loss_type, max_new_tokens)).item()

    assert loss("dapo") == pytest.approx((a + b + c + d) / 4)  # token mean
    assert loss("grpo") == pytest.approx((a / 1 + (b + c + d) / 3) / 2)  # sequence mean, then mean
    assert loss("dr_grpo", max_new_tokens=8) == pytest.approx((a + b + c + d) / (2 * 8))  # constant
    # a microbatch of each completion alone: the shares add up to the whole step's denominator
    for loss_type in LOSS_TYPES:
        parts = [denominator_share(mask[i : i + 1], loss_type, 4) for i in range(2)]
        assert sum(parts).item() == denominator_share(mask, loss_type, 4).item()
    with pytest.raises(ValueError, match="loss_type must be one of"):
        token_weights(mask, "bnpo")


def test_sequence_level_ratio_is_one_length_normalised_ratio_per_completion():
    """GSPO: log ratios [0.1, 0.3] on a 2-token completion give exp(0.2) on both tokens; padding is ignored."""
    logprobs = torch.tensor([[0.1, 0.3, 5.0]])
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.ones(1, 3)
    terms = policy_loss(logprobs, old, adv, mask, clip_eps=0.5, importance_sampling_level="sequence")
    ratio = torch.exp(torch.tensor(0.2))
    torch.testing.assert_close(terms.loss[0, :2], -ratio.expand(2))
    token = policy_loss(logprobs, old, adv, mask, clip_eps=0.5)
    torch.testing.assert_close(token.loss[0, :2], -torch.exp(torch.tensor([0.1, 0.3])))
    # ratio exp(0.2) = 1.22 is above 1 + 0.1: clipped high on both tokens with A > 0
    clipped = policy_loss(logprobs, old, adv, mask, clip_eps=0.1, importance_sampling_level="sequence")
    assert clipped.clipped_high[0, :2].tolist() == [True, True] and not clipped.clipped_low.any()


def test_one_token_rlhf_loss_equals_classic_loss():
    """A 1-token completion is a 1-step episode: the per-token machinery must reduce to classic PPO."""
    g = torch.Generator().manual_seed(0)
    logprobs, old_logprobs = torch.randn(6, 1, generator=g), torch.randn(6, 1, generator=g)
    scores, values = torch.randn(6, generator=g), torch.randn(6, 1, generator=g)
    mask = torch.ones(6, 1)
    adv, ret = compute_advantages(
        "gae", scores, torch.zeros(6, 1), 0.0, mask, 1, values, gamma=1.0, gae_lambda=0.95, whiten=False
    )
    # classic: one-step episode, A = r - V(s), R = r
    torch.testing.assert_close(adv[:, 0], scores - values[:, 0])
    torch.testing.assert_close(ret[:, 0], scores)
    rlhf_loss = F.ppo_policy_loss(logprobs, old_logprobs, adv, 0.2, mask)[0]
    classic_loss = F.ppo_policy_loss(logprobs[:, 0], old_logprobs[:, 0], scores - values[:, 0], 0.2)[0]
    torch.testing.assert_close(rlhf_loss, classic_loss)
