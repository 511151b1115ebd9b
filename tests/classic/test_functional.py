import pytest
import torch

from classic import functional as F


def slow_gae(rewards, values, next_values, terminated, dones, gamma, lam):
    """The obvious per-element loop, for comparison on random inputs."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        a_next = 0.0
        for t in reversed(range(T)):
            delta = rewards[b, t] + gamma * next_values[b, t] * (1 - terminated[b, t]) - values[b, t]
            a_next = delta + gamma * lam * (1 - dones[b, t]) * a_next
            adv[b, t] = a_next
    return adv


def test_masked_mean_and_var_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert F.masked_mean(x, mask).item() == pytest.approx(2.0)
    assert F.masked_var(x, mask).item() == pytest.approx(1.0)  # ((1)^2+0+(1)^2)/(3-1)
    assert F.masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert F.masked_mean(torch.zeros(2, 3), torch.zeros(2, 3), dim=1).tolist() == [0.0, 0.0]


def test_masked_whiten_by_hand():
    x = torch.tensor([1.0, 3.0, 50.0])
    mask = torch.tensor([1.0, 1.0, 0.0])
    w = F.masked_whiten(x, mask, eps=0.0)
    # mean 2, unbiased var 2 -> std sqrt(2)
    assert w.tolist() == pytest.approx([-1 / 2**0.5, 1 / 2**0.5, 0.0])
    w2 = F.masked_whiten(x, mask, shift_mean=False, eps=0.0)
    assert w2[:2].tolist() == pytest.approx([2 - 1 / 2**0.5, 2 + 1 / 2**0.5])


def test_discounted_returns_by_hand():
    r = torch.tensor([1.0, 1.0, 1.0, 1.0])
    d = torch.tensor([0.0, 1.0, 0.0, 0.0])
    g = F.discounted_returns(r, gamma=0.5, dones=d)
    assert g.tolist() == pytest.approx([1.5, 1.0, 1.5, 1.0])


def test_gae_by_hand_terminated_vs_truncated():
    # two steps; V = 1 everywhere, r = 1, gamma 0.9, lam 0.5
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    v = torch.ones(2, 2)
    nv = torch.ones(2, 2)
    done = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    term = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # row 0 terminates, row 1 is truncated
    adv, ret = F.gae_advantages(r, v, nv, term, done, gamma=0.9, lam=0.5)
    # row 0: delta_1 = 1 + 0 - 1 = 0; delta_0 = 1 + .9 - 1 = .9; A_0 = .9 + .45*0 = .9
    # row 1: delta_1 = 1 + .9 - 1 = .9; A_0 = .9 + .45 * .9 = 1.305
    torch.testing.assert_close(adv, torch.tensor([[0.9, 0.0], [1.305, 0.9]]))
    torch.testing.assert_close(ret, torch.tensor([[1.9, 1.0], [2.305, 1.9]]))


def test_gae_matches_slow_loop_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 17
    r, v, nv = (torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(3))
    dones = (torch.rand(B, T, generator=g) < 0.2).double()
    term = dones * (torch.rand(B, T, generator=g) < 0.5).double()
    adv, ret = F.gae_advantages(r, v, nv, term, dones, gamma=0.97, lam=0.9)
    torch.testing.assert_close(adv, slow_gae(r, v, nv, term, dones, 0.97, 0.9))
    torch.testing.assert_close(ret, adv + v)


def test_gae_lambda_one_equals_discounted_returns_minus_values():
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(2, 9, generator=g), torch.randn(2, 9, generator=g)
    dones = torch.zeros(2, 9)
    dones[:, -1] = 1
    next_v = torch.cat([v[:, 1:], torch.zeros(2, 1)], dim=1)  # V(s_{t+1}); 0 after the terminal step
    adv, ret = F.gae_advantages(r, v, next_v, dones, dones, gamma=0.8, lam=1.0)
    torch.testing.assert_close(ret, F.discounted_returns(r, 0.8, dones))


def test_ppo_policy_loss_by_hand_and_clipping_acts():
    old = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    new = torch.log(torch.tensor([0.8, 0.8, 0.2]))  # ratios 1.6, 1.6, 0.4
    adv = torch.tensor([1.0, -1.0, -1.0])
    loss, clipfrac, _ = F.ppo_policy_loss(new, old, adv, clip_eps=0.2)
    # per-sample max(-A r, -A clip(r)): A=1: max(-1.6,-1.2)=-1.2 (clipped); A=-1,r=1.6: max(1.6,1.2)=1.6;
    # A=-1, r=0.4: max(0.4, 0.8)=0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.6 + 0.8) / 3)
    assert clipfrac.item() == pytest.approx(2 / 3)
    # the two clipped elements are one of each side: A=1 above 1+eps (high), A=-1 below 1-eps (low)
    _, low, high = F.clipped_surrogate(torch.exp(new - old), adv, 0.2)
    assert low.tolist() == [False, False, True] and high.tolist() == [True, False, False]
    # DAPO's clip-higher: eps_high 0.7 lets the A=1 sample's ratio 1.6 through unclipped
    loss, clipfrac, _ = F.ppo_policy_loss(new, old, adv, clip_eps=0.2, clip_eps_high=0.7)
    assert loss.item() == pytest.approx((-1.6 + 1.6 + 0.8) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)
    # gradient is zero for clipped samples
    new = new.clone().requires_grad_(True)
    F.ppo_policy_loss(new, old, adv, 0.2)[0].backward()
    assert new.grad[0].item() == 0.0 and new.grad[2].item() == 0.0 and new.grad[1].item() != 0.0


def test_ppo_policy_loss_masked_ignores_padding():
    lp = torch.tensor([[0.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, 2.0, 100.0]])
    loss, _, kl = F.ppo_policy_loss(lp, lp, adv, 0.2, mask)
    assert loss.item() == pytest.approx(-1.5)
    assert kl.item() == pytest.approx(0.0)


def test_value_loss_by_hand():
    values = torch.tensor([2.0, 0.0])
    old = torch.tensor([1.0, 0.0])
    ret = torch.tensor([2.0, 1.0])
    loss, clipfrac = F.value_loss(values, old, ret, clip_eps=0.5)
    # sample 0: unclipped 0, clipped value 1.5 -> 0.25 -> max 0.25; sample 1: both 1
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0) / 2)
    assert clipfrac.item() == pytest.approx(0.5)
    assert F.value_loss(values, old, ret, clip_eps=None)[0].item() == pytest.approx(0.5 * 1.0 / 2)


def test_entropy_and_logprobs():
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    expected = -(2 * 0.25 * torch.log(torch.tensor(0.25)) + 0.5 * torch.log(torch.tensor(0.5)))
    assert F.entropy_from_logits(logits).item() == pytest.approx(expected.item())
    assert F.logprobs_from_logits(logits * 1.0 + 3.0, torch.tensor([2])).item() == pytest.approx(
        torch.log(torch.tensor(0.5)).item()
    )


def test_explained_variance():
    r = torch.tensor([1.0, 2.0, 3.0])
    assert F.explained_variance(r, r).item() == pytest.approx(1.0)
    assert F.explained_variance(torch.full((3,), 2.0), r).item() == pytest.approx(0.0)


def test_group_estimators_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0])  # 2 prompts x 3 samples
    rloo = F.rloo_advantages(scores, 3)
    assert rloo.tolist() == pytest.approx([1 - 2.5, 2 - 2.0, 3 - 1.5, 0 - 2.0, 0 - 2.0, 4 - 0.0])
    grpo = F.grpo_advantages(scores, 3, eps=0.0)
    assert grpo[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0])  # mean 2, std 1
    assert F.grpo_advantages(scores, 3, scale="none")[3:].tolist() == pytest.approx([-4 / 3, -4 / 3, 8 / 3])
    # batch scaling: the same centring, divided by the std of all six scores (sample std 1.6733)
    std = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0]).std().item()
    batch = F.grpo_advantages(scores, 3, scale="batch", eps=0.0)
    assert batch.tolist() == pytest.approx([-1 / std, 0.0, 1 / std, -4 / 3 / std, -4 / 3 / std, 8 / 3 / std])
    assert F.grpo_advantages(scores, 3, scale="batch", eps=0.0, batch_std=torch.tensor(2.0))[0].item() == -0.5
    # group mean baseline: r - mean_group, no scaling (the whitening comes later, over tokens)
    gm = F.group_mean_baseline_advantages(scores, 3)
    assert gm.tolist() == pytest.approx([-1.0, 0.0, 1.0, -4 / 3, -4 / 3, 8 / 3])
    with pytest.raises(ValueError, match="group_size"):
        F.rloo_advantages(scores, 1)
