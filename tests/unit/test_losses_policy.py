"""Sequence-ratio and new policy losses by hand: RLOO's sequence ratio, off-policy REINFORCE,
DAPO, GSPO, the entropy bonus, and the POLICY_LOSSES registry; plus a bandit each must solve."""

import math

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.losses.advantages import grpo_advantages, reinforce_pp_advantages, rloo_advantages
from alignlab.losses.ppo import (
    GRPO_LOSS_TYPES,
    POLICY_LOSSES,
    dapo_loss,
    entropy_bonus,
    get_policy_loss,
    gspo_loss,
    policy_loss_defaults,
    ppo_policy_loss,
    reinforce_loss,
    rloo_loss,
)

# ------------------------------------------------------------------------------ RLOO sequence ratio


def test_rloo_loss_hand_value_uses_the_sequence_ratio():
    # row 0: log-ratios 0.1 + 0.2 -> ρ = e^0.3 = 1.3499 > 1.2, A = +1: clipped, -1.2
    # row 1: log-ratio -0.05 (one token)  -> ρ = e^-0.05 = 0.9512,  A = -2: -A·ρ = 1.9025 (inside)
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    new = old + torch.tensor([[0.1, 0.2, 5.0], [-0.05, 5.0, 5.0]])  # 5.0 on padding: ignored
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, stats = rloo_loss(new, old, adv, mask, cliprange=0.2)
    expected = (-1.2 + 2.0 * math.exp(-0.05)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["policy/clipfrac"].item() == pytest.approx(0.5)  # one sequence of two
    assert stats["policy/ratio_mean"].item() == pytest.approx((math.exp(0.3) + math.exp(-0.05)) / 2, abs=1e-6)


def test_rloo_gradient_at_ratio_one_is_a_times_the_sum_of_grad_logp():
    # A tiny categorical "language model": one logit vector θ shared by every position.
    # Two responses of lengths 2 and 5, the same advantage. At ρ = 1 the gradient of each response
    # must be -A/B · Σ_t ∇log π(y_t) (the whole sequence), not -A/(B|y|) · Σ_t ∇log π(y_t).
    theta = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    tokens = [[0, 2], [1, 3, 3, 2, 0]]
    adv = 0.7

    def logprobs_of(rows):
        logp = torch.log_softmax(theta, -1)
        T = max(len(r) for r in rows)
        out = torch.zeros(len(rows), T, dtype=torch.float64)
        mask = torch.zeros(len(rows), T)
        for i, r in enumerate(rows):
            out[i, : len(r)] = logp[r]
            mask[i, : len(r)] = 1
        return out, mask

    def grad_of(loss):
        (g,) = torch.autograd.grad(loss, theta, retain_graph=True)
        return g

    logprobs, mask = logprobs_of(tokens)
    A = torch.full((2,), adv, dtype=torch.float64)
    g_rloo = grad_of(rloo_loss(logprobs, logprobs.detach(), A, mask)[0])
    # the two responses' Σ_t ∇log π by autograd, each on its own
    sum_grads = [grad_of(torch.log_softmax(theta, -1)[r].sum()) for r in tokens]
    assert torch.allclose(g_rloo, -adv / 2 * (sum_grads[0] + sum_grads[1]))
    # per response: feeding one response at a time (B = 1) gives exactly -A Σ∇log π, in ratio of Σ∇log π
    for r, s in zip(tokens, sum_grads):
        lp, m = logprobs_of([r])
        g = grad_of(rloo_loss(lp, lp.detach(), A[:1], m)[0])
        assert torch.allclose(g, -adv * s)
    # the per-token ratio averaged per sequence (PPO "sequence" reduction) divides by |y| instead
    g_ppo_seq = grad_of(
        ppo_policy_loss(logprobs, logprobs.detach(), A[:, None].expand_as(logprobs), mask, 0.2, "sequence")[0]
    )
    assert torch.allclose(g_ppo_seq, -adv / 2 * (sum_grads[0] / 2 + sum_grads[1] / 5))
    assert not torch.allclose(g_ppo_seq, g_rloo)


# ------------------------------------------------------------------------------ off-policy REINFORCE


def test_reinforce_with_old_logprobs_hand_value_and_weights():
    logprobs = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, 9.0, 9.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -2.1, 0.0], [-0.2, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = reinforce_loss(logprobs, adv, mask, old_logprobs=old)
    w = [math.exp(-3.0 + 3.3), math.exp(-0.5 + 0.2)]  # sequence ratios e^0.3, e^-0.3
    # loss = mean(-A_i w_i Σ log π) = (-2·w0·(-3) + 1·w1·(-0.5)) / 2
    assert loss.item() == pytest.approx((6 * w[0] - 0.5 * w[1]) / 2, abs=1e-6)
    assert stats["policy/ratio_mean"].item() == pytest.approx(sum(w) / 2, abs=1e-6)
    loss.backward()
    expected = torch.tensor([[-2 * w[0] / 2] * 2 + [0.0], [w[1] / 2, 0.0, 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-6)
    # π_θ = π_old: the on-policy loss exactly
    on, _ = reinforce_loss(logprobs.detach(), adv, mask)
    same, _ = reinforce_loss(logprobs.detach(), adv, mask, old_logprobs=logprobs.detach())
    assert same.item() == on.item()


def test_reinforce_second_minibatch_from_a_stale_policy_gets_the_on_policy_gradient():
    # Categorical bandit, θ the logits. Both minibatches were sampled from π_0; after one optimizer
    # step on the first, the second is off-policy. With old_logprobs its gradient is the exact
    # importance-weighted one, Σ_a π_0(a)·(π_1(a)/π_0(a))·A(a)·∇log π_1(a) = ∇_θ Σ_a π_1(a) A(a).
    theta0 = torch.tensor([0.5, -0.3, 0.0, 0.2], dtype=torch.float64)
    A = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)  # a fixed advantage per arm
    K = 4
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=0.5)
    pi0 = torch.softmax(theta0, -1)
    old_all = torch.log_softmax(theta0, -1)

    first = torch.tensor([0, 2, 2, 1])  # minibatch 1 (on-policy at θ0)
    lp = torch.log_softmax(theta, -1)[first][:, None]
    loss, _ = reinforce_loss(lp, A[first], torch.ones(4, 1), old_logprobs=old_all[first][:, None])
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.allclose(theta.detach(), theta0)  # the policy moved

    # minibatch 2 as its exact expectation under π_0: every arm once, advantage scaled by K·π_0(a)
    arms = torch.arange(K)
    lp = torch.log_softmax(theta, -1)[arms][:, None]
    weighted = K * pi0 * A
    (g_corrected,) = torch.autograd.grad(
        reinforce_loss(lp, weighted, torch.ones(K, 1), old_logprobs=old_all[:, None])[0], theta
    )
    theta1 = theta.detach().clone().requires_grad_(True)
    (g_exact,) = torch.autograd.grad(-(torch.softmax(theta1, -1) * A).sum(), theta1)
    assert torch.allclose(g_corrected, g_exact, atol=1e-12)
    lp = torch.log_softmax(theta, -1)[arms][:, None]
    (g_stale,) = torch.autograd.grad(reinforce_loss(lp, weighted, torch.ones(K, 1))[0], theta)
    assert not torch.allclose(g_stale, g_exact, atol=1e-3)

    # and on sampled actions: the gradient is (1/n) Σ_i -ρ_i A_i (e_{a_i} - π_1), by hand
    second = torch.tensor([3, 0, 2, 2, 1])
    lp = torch.log_softmax(theta, -1)[second][:, None]
    (g,) = torch.autograd.grad(
        reinforce_loss(lp, A[second], torch.ones(5, 1), old_logprobs=old_all[second][:, None])[0], theta
    )
    pi1 = torch.softmax(theta.detach(), -1)
    rho = pi1[second] / pi0[second]
    by_hand = sum(-rho[i] * A[a] * (torch.eye(K, dtype=torch.float64)[a] - pi1) for i, a in enumerate(second)) / 5
    assert torch.allclose(g, by_hand, atol=1e-12)


# ------------------------------------------------------------------------------ DAPO


def test_dapo_clip_higher_and_token_level_mean():
    # row 0 (3 tokens), row 1 (1 token + 2 pad); per token max(-ρA, -clip(ρ, 0.8, 1.28)A):
    #   ρ=1.25 A=+1: -1.25    (PPO's symmetric 0.2 would clip to -1.2)
    #   ρ=1.40 A=+1: -1.28    clipped high
    #   ρ=0.70 A=+1: -0.70    (pessimistic term is the unclipped one)
    #   ρ=0.70 A=-1:  0.80    clipped low at 0.8
    ratios = torch.tensor([[1.25, 1.4, 0.7], [0.7, 1.0, 1.0]])
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, 0.0, 0.0]])
    new = old + ratios.log()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = dapo_loss(new, old, adv, mask)
    assert loss.item() == pytest.approx((-1.25 - 1.28 - 0.70 + 0.80) / 4, abs=1e-6)  # Σ / 4 tokens
    assert stats["policy/clipfrac"].item() == pytest.approx(2 / 4)
    ppo, _ = ppo_policy_loss(new, old, adv[:, None].expand_as(new), mask, 0.2)
    assert ppo.item() == pytest.approx((-1.2 - 1.2 - 0.70 + 0.80) / 4, abs=1e-6)
    # a per-sequence mean would be ((-1.25 - 1.28 - 0.7)/3 + 0.8) / 2: DAPO is not that
    assert loss.item() != pytest.approx(((-1.25 - 1.28 - 0.7) / 3 + 0.8) / 2, abs=1e-3)


# ------------------------------------------------------------------------------ GSPO


def test_gspo_sequence_ratio_is_the_per_token_geometric_mean():
    # row 0: log-ratios [2e-4, 4e-4] -> s = e^3e-4 inside [1-3e-4, 1+4e-4]; A = +1: -s
    # row 1: log-ratios [1e-3] -> s = e^1e-3 > 1 + 4e-4; A = +2: clipped, -2·(1+4e-4), no gradient
    old = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], dtype=torch.float64)
    delta = torch.tensor([[2e-4, 4e-4], [1e-3, 0.0]], dtype=torch.float64)
    new = (old + delta).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, 2.0], dtype=torch.float64)
    loss, stats = gspo_loss(new, old, adv, mask)
    assert loss.item() == pytest.approx((-math.exp(3e-4) - 2 * (1 + 4e-4)) / 2, abs=1e-12)
    assert stats["policy/clipfrac"].item() == 0.5
    loss.backward()
    # d/dlogπ_t of -A·s = -A·s/|y| per token of row 0 (mean over 2 tokens), over B = 2 rows
    s0 = math.exp(3e-4)
    assert new.grad[0].tolist() == pytest.approx([-s0 / 2 / 2] * 2, abs=1e-12)
    assert new.grad[1].tolist() == [0.0, 0.0]


def test_gspo_ratio_does_not_grow_with_length():
    # the same per-token drift on a 1-token and a 50-token response gives the same s
    old = torch.zeros(2, 50)
    mask = torch.zeros(2, 50)
    mask[0, 0] = 1
    mask[1, :] = 1
    _, stats = gspo_loss(old + 1e-4, old, torch.ones(2), mask, cliprange_low=1.0, cliprange_high=1.0)
    assert stats["policy/ratio_mean"].item() == pytest.approx(math.exp(1e-4), abs=1e-6)
    _, rloo_stats = rloo_loss(old + 1e-4, old, torch.ones(2), mask, cliprange=1.0)
    assert rloo_stats["policy/ratio_mean"].item() == pytest.approx((math.exp(1e-4) + math.exp(50e-4)) / 2, abs=1e-6)


# ------------------------------------------------------------------------------ entropy bonus


def test_entropy_bonus_value_and_gradient_raise_entropy():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0]]], requires_grad=True)  # (1, 2, 4)
    mask = torch.tensor([[1, 0]])  # only the uniform position counts
    H, stats = entropy_bonus(logits, mask)
    assert H.item() == pytest.approx(math.log(4), abs=1e-6)
    assert stats["entropy"].item() == pytest.approx(math.log(4), abs=1e-6)
    # the peaked position: H = log Z - Σ p z, p = e^z / Z, Z = e^2 + 3
    H2, _ = entropy_bonus(logits, torch.tensor([[0, 1]]))
    Z = math.exp(2) + 3
    assert H2.item() == pytest.approx(math.log(Z) - 2 * math.exp(2) / Z, abs=1e-6)
    (-H2).backward()  # the trainer adds -c·H: descending it must flatten the peak
    assert logits.grad[0, 1, 0] > 0 and (logits.grad[0, 1, 1:] < 0).all()


# ------------------------------------------------------------------------------ registry


def test_policy_loss_registry_and_defaults():
    assert {"ppo", "grpo", "reinforce", "rloo", "dapo", "gspo", "reinforce_pp"} == set(POLICY_LOSSES)
    assert policy_loss_defaults("dapo") == {"cliprange_low": 0.2, "cliprange_high": 0.28}
    assert policy_loss_defaults("gspo") == {"cliprange_low": 3e-4, "cliprange_high": 4e-4}
    assert get_policy_loss("reinforce_pp").advantages == "reinforce_pp"
    assert get_policy_loss("gspo").fn is gspo_loss and get_policy_loss("rloo").fn is rloo_loss
    assert set(GRPO_LOSS_TYPES) == {"grpo", "dr_grpo"}
    with pytest.raises(ConfigError, match="did you mean 'dapo'"):
        get_policy_loss("dapoo")


# ------------------------------------------------------------------------------ a bandit each solves

REWARD = torch.tensor([0.0, 0.2, 1.0, 0.1])  # arm 2 is the best


def _train(update, steps=150, group=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        with torch.no_grad():
            old_all = torch.log_softmax(theta, -1)
            actions = torch.multinomial(old_all.exp(), group, replacement=True, generator=g)  # (G,)
            scores = REWARD[actions] + 0.1 * torch.randn(group, generator=g)  # noisy scores
        for _ in range(2):  # two epochs: the second is off-policy
            lp = torch.log_softmax(theta, -1)[actions][:, None]  # (G, 1) one-token responses
            loss = update(lp, old_all[actions][:, None], scores, torch.ones(group, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.softmax(theta.detach(), -1)


def _reinforce_pp(scores, old, mask):
    uniform = torch.full_like(old, -math.log(4))  # π_ref uniform, a small KL weight
    adv, _ = reinforce_pp_advantages(scores, old, uniform, mask, beta=0.01)
    return adv  # (G, 1)


@pytest.mark.parametrize(
    "name, update",
    [
        ("rloo", lambda lp, old, s, m: rloo_loss(lp, old, rloo_advantages(s, s.numel()), m)[0]),
        ("reinforce_is", lambda lp, old, s, m: reinforce_loss(lp, rloo_advantages(s, s.numel()), m, old)[0]),
        ("dapo", lambda lp, old, s, m: dapo_loss(lp, old, grpo_advantages(s, s.numel()), m)[0]),
        ("gspo", lambda lp, old, s, m: gspo_loss(lp, old, grpo_advantages(s, s.numel()), m, 0.2, 0.2)[0]),
        ("reinforce_pp", lambda lp, old, s, m: ppo_policy_loss(lp, old, _reinforce_pp(s, old, m), m, 0.2)[0]),
    ],
)
def test_each_policy_loss_finds_the_best_arm(name, update):
    pi = _train(update)
    assert pi[2] > 0.9, f"{name}: π = {pi.tolist()}"
