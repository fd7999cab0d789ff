"""KL estimators, β controllers and the KL-penalised reward, against hand-computed values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.errors import ConfigError
from alignlab.losses.kl import (
    K3_LOG_RATIO_CLAMP,
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_loss_term,
    log_ratio,
    make_kl_controller,
    reward_with_kl,
)

# ------------------------------------------------------------------------------------ estimators


def test_estimators_hand_values():
    # ℓ = log π − log π_ref for two tokens: ℓ = log 2 and ℓ = −1.
    logprobs = torch.tensor([[math.log(0.5), math.log(0.1)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.1) + 1.0]])
    l0, l1 = math.log(2.0), -1.0
    # k1 = ℓ
    assert kl_estimate(logprobs, ref, "k1").tolist()[0] == pytest.approx([l0, l1], abs=1e-6)
    # k2 = ½ℓ²: ½·0.48045 = 0.240227, ½·1 = 0.5
    assert kl_estimate(logprobs, ref, "k2").tolist()[0] == pytest.approx([0.2402265, 0.5], abs=1e-6)
    # k3 = e^{−ℓ} − 1 + ℓ: 0.5 − 1 + 0.693147 = 0.193147; e − 1 − 1 = 0.718282
    assert kl_estimate(logprobs, ref, "k3").tolist()[0] == pytest.approx([0.1931472, 0.7182818], abs=1e-6)
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_k1_and_k3_are_unbiased_under_exact_expectation():
    # E_{y~π}[k1] = E_{y~π}[k3] = KL(π‖π_ref) exactly when the expectation is a sum over y.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    true_kl = float((p * (p / q).log()).sum())
    for name in ("k1", "k3"):
        est = float((p * kl_estimate(p.log(), q.log(), name)).sum())
        assert est == pytest.approx(true_kl, rel=1e-12), name
    # k2 is biased: here it is not the KL
    assert float((p * kl_estimate(p.log(), q.log(), "k2")).sum()) != pytest.approx(true_kl, rel=1e-3)


def test_k3_small_log_ratio_is_accurate_and_nonnegative():
    ell = torch.tensor([1e-4, -1e-4, 1e-7, 0.0])
    k3 = kl_estimate(ell, torch.zeros_like(ell), "k3")
    assert (k3 >= 0).all()
    # k3 ≈ ℓ²/2 for small ℓ
    assert k3[0].item() == pytest.approx(5e-9, rel=1e-2)
    assert k3[1].item() == pytest.approx(5e-9, rel=1e-2)
    assert k3[3].item() == 0.0


def test_k3_finite_at_extremes():
    ell = torch.tensor([100.0, -100.0, 50.0, -50.0, 1e30, -1e30])
    k3 = kl_estimate(ell, torch.zeros_like(ell), "k3")
    assert torch.isfinite(k3).all() and (k3 >= 0).all()
    # at the clamp: ℓ = −C gives e^C − 1 − C, ℓ = +C gives e^{−C} − 1 + C
    c = K3_LOG_RATIO_CLAMP
    assert k3[1].item() == pytest.approx(math.expm1(c) - c, rel=1e-5)
    assert k3[0].item() == pytest.approx(math.expm1(-c) + c, rel=1e-5)
    # gradients stay finite too
    lp = ell.clone().requires_grad_(True)
    kl_estimate(lp, torch.zeros_like(lp), "k3").sum().backward()
    assert torch.isfinite(lp.grad).all()


def test_k3_half_precision_inputs_do_not_overflow():
    ell = torch.tensor([-50.0, 3.0], dtype=torch.bfloat16)
    k3 = kl_estimate(ell, torch.zeros_like(ell), "k3")
    assert k3.dtype == torch.float32 and torch.isfinite(k3).all()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False), min_size=1, max_size=16),
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False), min_size=1, max_size=16),
)
def test_k3_never_negative_property(a, b):
    n = min(len(a), len(b))
    lp, ref = torch.tensor(a[:n]), torch.tensor(b[:n])
    k3 = kl_estimate(lp, ref, "k3")
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all()
    assert (kl_estimate(lp, ref, "k2") >= 0).all()


def test_k3_nonnegative_random():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(64, 128, generator=g) * 5
    ref = torch.randn(64, 128, generator=g) * 5
    assert (kl_estimate(lp, ref, "k3") >= 0).all()


def test_log_ratio_is_public_and_upcasts_bf16():
    lp = torch.tensor([-1.0, -2.5], dtype=torch.bfloat16)
    ref = torch.tensor([-1.5, -2.0], dtype=torch.bfloat16)
    out = log_ratio(lp, ref)
    assert out.dtype == torch.float32 and out.tolist() == pytest.approx([0.5, -0.5])


# ------------------------------------------------------------------------ KL in the loss: gradients
# A categorical π = softmax(θ) over 4 outcomes and a fixed π_ref, far apart. The expected gradient
# of an estimator on samples y ~ π is Σ_y π(y) ∇k(y) with π(y) held fixed (the sampling does not
# depend on θ in the loss); compare it with the exact gradients of the two KL directions.

THETA = torch.tensor([1.0, -0.5, 0.3, 0.0], dtype=torch.float64)
REF = torch.tensor([0.1, 0.5, 0.2, 0.2], dtype=torch.float64)


def _exact_kl_grads():
    theta = THETA.clone().requires_grad_(True)
    p = torch.softmax(theta, -1)
    (forward,) = torch.autograd.grad((p * (p.log() - REF.log())).sum(), theta)  # ∇KL(π‖π_ref)
    theta = THETA.clone().requires_grad_(True)
    p = torch.softmax(theta, -1)
    (reverse,) = torch.autograd.grad((REF * (REF.log() - p.log())).sum(), theta)  # ∇KL(π_ref‖π)
    return forward, reverse


def _expected_estimator_grad(estimator: str) -> torch.Tensor:
    theta = THETA.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)  # (4,)
    k = kl_estimate(logp, REF.log(), estimator)  # (4,) with grad through log π
    (g,) = torch.autograd.grad((logp.detach().exp() * k).sum(), theta)
    return g


def test_expected_gradient_of_each_estimator_exact():
    forward, reverse = _exact_kl_grads()
    assert not torch.allclose(forward, reverse, atol=1e-2)  # the two directions really differ here
    assert torch.allclose(_expected_estimator_grad("k2"), forward, atol=1e-12)  # k2: ∇KL(π‖π_ref)
    assert torch.allclose(_expected_estimator_grad("k3"), reverse, atol=1e-12)  # k3: ∇KL(π_ref‖π)
    assert torch.allclose(_expected_estimator_grad("k1"), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_kl_loss_term_default_gradient_matches_kl_by_monte_carlo():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    y = torch.multinomial(torch.softmax(THETA, -1), n, replacement=True, generator=g)  # samples of π
    forward, reverse = _exact_kl_grads()

    def mc_grad(estimator: str | None) -> torch.Tensor:
        theta = THETA.clone().requires_grad_(True)
        logp = torch.log_softmax(theta, -1)[y][:, None]  # (n, 1) one-token responses
        args = (logp, REF.log()[y][:, None], torch.ones(n, 1))
        loss, _ = kl_loss_term(*args) if estimator is None else kl_loss_term(*args, estimator=estimator)
        (grad,) = torch.autograd.grad(loss, theta)
        return grad

    assert torch.allclose(mc_grad(None), forward, atol=2e-2)  # the default is k2
    assert not torch.allclose(mc_grad(None), reverse, atol=2e-2)
    assert torch.allclose(mc_grad("k3"), reverse, atol=2e-2)
    assert mc_grad("k1").abs().max() < 2e-2


def test_kl_loss_term_hand_value_and_padding():
    logprobs = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, 0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = kl_loss_term(logprobs, ref, mask)
    # ℓ = [0.5, -1.0, 0.0] on the 3 valid tokens; k2 = ½ℓ² = [0.125, 0.5, 0]
    assert loss.item() == pytest.approx((0.125 + 0.5 + 0.0) / 3)
    assert stats["policy/kl_k1"].item() == pytest.approx((0.5 - 1.0 + 0.0) / 3)
    loss.backward()
    # d k2/d log π = ℓ, per-token mean over 3 tokens; 0 on padding even where it held NaN
    assert torch.allclose(logprobs.grad, torch.tensor([[0.5 / 3, -1.0 / 3, 0.0], [0.0, 0.0, 0.0]]))


def test_unknown_estimator_names_closest():
    with pytest.raises(ConfigError, match="'k3'"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "K3")
    with pytest.raises(ConfigError, match="KL estimator"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "kl")


# ----------------------------------------------------------------------------------- controllers


def test_adaptive_controller_hand_value_clipped_error():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    # e = clip(8/6 − 1 = 0.333, −0.2, 0.2) = 0.2;  β = 0.1 · (1 + 0.2 · 256 / 10000) = 0.100512
    assert ctl.update(8.0, 256) == pytest.approx(0.100512, rel=1e-12)
    assert ctl.beta == pytest.approx(0.100512, rel=1e-12)


def test_adaptive_controller_hand_value_unclipped_error():
    ctl = AdaptiveKLController(init_beta=0.2, target=5.0, horizon=1000)
    # e = 5.5/5 − 1 = 0.1;  β = 0.2 · (1 + 0.1 · 100 / 1000) = 0.202
    ctl.update(5.5, 100)
    assert ctl.beta == pytest.approx(0.202, rel=1e-12)
    # e = 4/5 − 1 = −0.2;  β = 0.202 · (1 − 0.2 · 100 / 1000) = 0.19796
    ctl.update(torch.tensor(4.0), 100)
    assert ctl.beta == pytest.approx(0.19796, rel=1e-12)


def test_adaptive_controller_direction():
    up = AdaptiveKLController(0.1, target=1.0, horizon=100)
    down = AdaptiveKLController(0.1, target=1.0, horizon=100)
    same = AdaptiveKLController(0.1, target=1.0, horizon=100)
    for _ in range(5):
        up.update(3.0, 8)
        down.update(0.2, 8)
        same.update(1.0, 8)
    assert up.beta > 0.1 > down.beta
    assert same.beta == pytest.approx(0.1)


def test_fixed_controller_does_not_move():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.beta == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.beta == 0.05


def test_controller_state_dict_round_trip_continues_exactly():
    kls = [0.5, 3.0, 2.2, 1.7, 0.1, 4.0, 2.0, 1.9]
    a = AdaptiveKLController(0.3, target=2.0, horizon=500)
    for kl in kls[:4]:
        a.update(kl, 16)
    state = a.state_dict()
    b = AdaptiveKLController(1.0, target=9.0, horizon=7)  # different settings, overwritten by load
    b.load_state_dict(state)
    assert b.beta == a.beta
    betas_a = [a.update(kl, 16) for kl in kls[4:]]
    betas_b = [b.update(kl, 16) for kl in kls[4:]]
    assert betas_a == betas_b  # bit-identical


def test_make_kl_controller_and_errors():
    assert set(KL_CONTROLLERS) == {"fixed", "adaptive"}
    assert isinstance(make_kl_controller("fixed", beta=0.1), FixedKLController)
    ctl = make_kl_controller("adaptive", init_beta=0.1, target=6.0, horizon=10000)
    assert isinstance(ctl, AdaptiveKLController) and ctl.beta == 0.1
    with pytest.raises(ConfigError, match="'adaptive'"):
        make_kl_controller("adaptiv", init_beta=0.1, target=6.0, horizon=10000)
    with pytest.raises(ConfigError, match="adaptive"):
        make_kl_controller("adaptive", beta=0.1)
    with pytest.raises(ConfigError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ConfigError, match="beta"):
        FixedKLController(-1.0)


# ------------------------------------------------------------------------------ reward_with_kl


def test_reward_with_kl_places_score_on_last_valid_token():
    # row 0: 3 valid tokens, row 1: 1 valid token, row 2: left padded (valid at t=2,3), row 3: empty
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    logprobs = torch.tensor(
        [[-1.0, -2.0, -0.5, 9.0], [-1.0, 9.0, 9.0, 9.0], [9.0, 9.0, -1.0, -1.0], [9.0, 9.0, 9.0, 9.0]]
    )
    ref = torch.tensor([[-1.5, -1.0, -0.5, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, -2.0, -0.5], [0.0, 0.0, 0.0, 0.0]])
    scores = torch.tensor([10.0, 20.0, 30.0, 40.0])
    rewards, kl = reward_with_kl(scores, logprobs, ref, mask, beta=0.1, estimator="k1")
    # k1 = logπ − logπ_ref on valid tokens, 0 elsewhere
    expected_kl = [[0.5, -1.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -0.5], [0.0, 0.0, 0.0, 0.0]]
    # reward = −0.1·kl, + score at the last valid token
    expected_rewards = [
        [-0.05, 0.1, 10.0, 0.0],
        [-0.2 + 20.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, -0.1, 0.05 + 30.0],
        [0.0, 0.0, 0.0, 0.0],  # empty row: no score, no crash
    ]
    assert torch.allclose(kl, torch.tensor(expected_kl), atol=1e-6)
    assert torch.allclose(rewards, torch.tensor(expected_rewards), atol=1e-5)


def test_reward_with_kl_clip_and_estimator():
    mask = torch.tensor([[1, 1]])
    lp = torch.tensor([[math.log(0.5), -1.0]])
    ref = torch.tensor([[math.log(0.25), -1.0]])
    rewards, kl = reward_with_kl(torch.tensor([-7.0]), lp, ref, mask, beta=1.0, estimator="k3", clip_score=5.0)
    # k3(log 2) = 0.193147; score clipped to −5
    assert kl.tolist()[0] == pytest.approx([0.1931472, 0.0], abs=1e-6)
    assert rewards.tolist()[0] == pytest.approx([-0.1931472, -5.0], abs=1e-6)
    with pytest.raises(ConfigError):
        reward_with_kl(torch.tensor([1.0]), lp, ref, mask, beta=1.0, estimator="k5")
