"""Unit tests for the DPO-family losses: hand-computed values, limits, gradients, dispatcher."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.errors import ConfigError, NumericalError
from alignlab.losses import preference as P
from alignlab.losses import reference_based as D
from alignlab.losses import reference_free as RF
from alignlab.losses import unpaired as K


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def nls(z: float) -> float:
    """-log σ(z) by hand."""
    return math.log(1.0 + math.exp(-z))


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# A 2-pair example used throughout:
#   ρ_w = chosen - ref_chosen     = [-5.0+5.5, -7.0+6.0] = [ 0.5, -1.0]
#   ρ_l = rejected - ref_rejected = [-6.0+5.8, -6.5+6.0] = [-0.2, -0.5]
#   h   = ρ_w - ρ_l               = [ 0.7, -0.5]
CHOSEN, REJECTED = t(-5.0, -7.0), t(-6.0, -6.5)
REF_CHOSEN, REF_REJECTED = t(-5.5, -6.0), t(-5.8, -6.0)
H = [0.7, -0.5]
BETA = 0.5


def ref_args():
    return (CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED)


# ----------------------------------------------------------------------------- DPO


def test_dpo_hand_value_and_stats():
    loss, stats = P.dpo(*ref_args(), beta=BETA)
    expected = (nls(BETA * 0.7) + nls(BETA * -0.5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # implicit rewards β·ρ: chosen [0.25, -0.5], rejected [-0.1, -0.25]
    assert stats["rewards/chosen"].item() == pytest.approx((0.25 - 0.5) / 2)
    assert stats["rewards/rejected"].item() == pytest.approx((-0.1 - 0.25) / 2)
    assert stats["rewards/margin"].item() == pytest.approx((0.35 + -0.25) / 2)
    assert stats["rewards/accuracy"].item() == pytest.approx(0.5)  # pair 1 right, pair 2 wrong
    assert stats["logps/chosen"].item() == pytest.approx(-6.0)
    assert stats["logps/rejected"].item() == pytest.approx(-6.25)
    # logratio/mean = mean over the 4 responses of ρ = (0.5 - 1.0 - 0.2 - 0.5) / 4 (not a KL: < 0)
    assert stats["logratio/mean"].item() == pytest.approx(-0.3)
    assert "kl" not in stats
    for value in stats.values():
        assert value.dim() == 0 and not value.requires_grad


def test_dpo_policy_equal_to_reference_is_log2():
    logps = t(-3.0, -10.0, -0.5)
    other = t(-4.0, -2.0, -7.0)
    loss, stats = P.dpo(logps, other, logps.clone(), other.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-15)
    assert stats["rewards/accuracy"].item() == 0.5  # all ties: chance, not 0
    assert stats["rewards/margin"].item() == 0.0
    assert stats["logratio/mean"].item() == 0.0


def test_dpo_beta_to_zero_is_log2():
    loss, _ = P.dpo(*ref_args(), beta=1e-9)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-9)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = CHOSEN.clone().requires_grad_()
    rejected = REJECTED.clone().requires_grad_()
    loss, _ = P.dpo(chosen, rejected, REF_CHOSEN, REF_REJECTED, beta=BETA)
    loss.backward()
    # descent direction -grad: increases chosen logps, decreases rejected logps
    assert (chosen.grad < 0).all()
    assert (rejected.grad > 0).all()
    # d/dlogπ(y_w) of -log σ(βh) = -β(1-σ(βh)), averaged over B=2
    assert chosen.grad[0].item() == pytest.approx(-BETA * (1 - sig(BETA * 0.7)) / 2)


def test_dpo_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        P.dpo(CHOSEN[:, None], REJECTED, REF_CHOSEN, REF_REJECTED, beta=BETA)


def test_beta_must_be_positive():
    with pytest.raises(ConfigError, match="beta"):
        P.dpo(*ref_args(), beta=0.0)


# ----------------------------------------------------------------------------- cDPO, robust


def test_cdpo_hand_value():
    eps = 0.1
    loss, _ = P.cdpo(*ref_args(), beta=BETA, label_smoothing=eps)
    expected = sum((1 - eps) * nls(BETA * h) + eps * nls(-BETA * h) for h in H) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fn", [P.cdpo, P.robust])
def test_smoothing_zero_equals_dpo(fn):
    loss, stats = fn(*ref_args(), beta=BETA, label_smoothing=0.0)
    dpo_loss, dpo_stats = P.dpo(*ref_args(), beta=BETA)
    assert loss.item() == pytest.approx(dpo_loss.item(), abs=1e-15)
    assert stats.keys() == dpo_stats.keys()


def test_robust_hand_value_and_can_be_negative():
    eps = 0.2
    loss, _ = P.robust(*ref_args(), beta=BETA, label_smoothing=eps)
    expected = sum(((1 - eps) * nls(BETA * h) - eps * nls(-BETA * h)) / (1 - 2 * eps) for h in H) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # unbiased-estimator form: negative for a confidently "right" pair
    big, _ = P.robust(t(0.0), t(-20.0), t(0.0), t(0.0), beta=1.0, label_smoothing=eps)
    assert big.item() == pytest.approx(((1 - eps) * nls(20.0) - eps * nls(-20.0)) / (1 - 2 * eps))
    assert big.item() < 0


def test_smoothing_range_is_checked():
    with pytest.raises(ConfigError, match="label_smoothing"):
        P.robust(*ref_args(), beta=BETA, label_smoothing=0.5)
    with pytest.raises(ConfigError, match="label_smoothing"):
        P.cdpo(*ref_args(), beta=BETA, label_smoothing=-0.1)
    P.cdpo(*ref_args(), beta=BETA, label_smoothing=0.5)  # allowed: a constant loss in h


# ----------------------------------------------------------------------------- IPO, hinge


def test_ipo_hand_value():
    loss, _ = P.ipo(*ref_args(), beta=BETA)
    target = 1 / (2 * BETA)  # = 1.0
    expected = ((0.7 - target) ** 2 + (-0.5 - target) ** 2) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_ipo_minimum_at_one_over_two_beta():
    beta = 0.25  # target h = 2.0

    def at(h: float):
        chosen = t(h).requires_grad_()
        loss, _ = P.ipo(chosen, t(0.0), t(0.0), t(0.0), beta=beta)
        loss.backward()
        return loss.item(), chosen.grad.item()

    value, grad = at(2.0)
    assert value == 0.0 and grad == 0.0
    assert at(1.9)[0] == pytest.approx(0.01) and at(2.1)[0] == pytest.approx(0.01)
    assert at(1.9)[1] < 0 < at(2.1)[1]  # pushes h up below the target, down above it


def test_hinge_hand_value_and_zero_beyond_margin():
    loss, _ = P.hinge(*ref_args(), beta=BETA)
    expected = (max(0.0, 1 - BETA * 0.7) + max(0.0, 1 - BETA * -0.5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    # β·h = 0.5·3 = 1.5 ≥ 1: no loss, no gradient
    chosen = t(3.0).requires_grad_()
    loss, _ = P.hinge(chosen, t(0.0), t(0.0), t(0.0), beta=BETA)
    loss.backward()
    assert loss.item() == 0.0 and chosen.grad.item() == 0.0


# ----------------------------------------------------------------------------- SimPO, ORPO


def test_simpo_hand_value():
    lengths_w, lengths_l = t(4.0, 10.0), t(2.0, 5.0)
    beta, gamma = 2.0, 0.5
    loss, stats = P.simpo(CHOSEN, REJECTED, lengths_w, lengths_l, beta=beta, simpo_gamma=gamma)
    z1 = beta * -5.0 / 4 - beta * -6.0 / 2 - gamma  # -2.5 + 6 - 0.5 = 3.0
    z2 = beta * -7.0 / 10 - beta * -6.5 / 5 - gamma  # -1.4 + 2.6 - 0.5 = 0.7
    assert loss.item() == pytest.approx((nls(z1) + nls(z2)) / 2, abs=1e-12)
    assert stats["rewards/chosen"].item() == pytest.approx((-2.5 - 1.4) / 2)
    assert stats["rewards/accuracy"].item() == 1.0
    assert "logratio/mean" not in stats


def test_simpo_gamma_zero_equal_lengths_is_scaled_logp_difference():
    lengths = t(3.0, 3.0)
    loss, _ = P.simpo(CHOSEN, REJECTED, lengths, lengths, beta=1.5, simpo_gamma=0.0)
    # -log σ(β/3·(logπ_w - logπ_l)): differences [1.0, -0.5]
    expected = (nls(1.5 / 3 * 1.0) + nls(1.5 / 3 * -0.5)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_orpo_hand_value():
    chosen, rejected = t(-2.0, -3.0), t(-3.0, -1.0)
    lengths_w, lengths_l = t(4.0, 3.0), t(2.0, 4.0)
    lam = 0.1

    def log_odds(a: float) -> float:
        return a - math.log(1 - math.exp(a))

    ratios = [log_odds(-0.5) - log_odds(-1.5), log_odds(-1.0) - log_odds(-0.25)]
    loss, stats = P.orpo(chosen, rejected, lengths_w, lengths_l, orpo_lambda=lam)
    nll = (2.0 + 3.0) / (4 + 3)  # token-level: all 7 chosen tokens weigh the same
    expected = nll + lam * (nls(ratios[0]) + nls(ratios[1])) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["nll"].item() == pytest.approx(5 / 7)
    assert stats["orpo/log_odds_ratio"].item() == pytest.approx(sum(ratios) / 2)
    assert stats["rewards/chosen"].item() == pytest.approx(lam * (-0.5 - 1.0) / 2)
    assert "logratio/mean" not in stats


def test_orpo_nll_is_token_level_not_a_mean_of_sequence_means():
    # chosen seq_logps -2 over 1 token and -2 over 4 tokens: 4 nats over 5 tokens = 0.8 per token.
    # The old input (a mean of the per-sequence means, -(logps/lengths)) gave (2 + 0.5) / 2 = 1.25.
    chosen, lengths = t(-2.0, -2.0), t(1.0, 4.0)
    _, stats = P.orpo(chosen, t(-9.0, -9.0), lengths, t(3.0, 3.0), orpo_lambda=0.1)
    assert stats["nll"].item() == pytest.approx(0.8, abs=1e-12)
    # the gradient of the NLL term: every chosen token weighs 1/5, so d/dlogπ(y_w) = -1/5 per
    # sequence whatever its length (the odds-ratio term is switched off with λ = 0)
    chosen = chosen.clone().requires_grad_()
    loss, _ = P.orpo(chosen, t(-9.0, -9.0), lengths, t(3.0, 3.0), orpo_lambda=0.0)
    loss.backward()
    assert chosen.grad.tolist() == pytest.approx([-0.2, -0.2], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("avg_logp", [0.0, -1e-12, -1e-7, 1e-6])
def test_orpo_finite_as_avg_logp_goes_to_zero(dtype, avg_logp):
    chosen = torch.tensor([avg_logp * 5], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-2.0], dtype=dtype, requires_grad=True)
    lengths = torch.tensor([5.0], dtype=dtype)
    loss, _ = P.orpo(chosen, rejected, lengths, lengths, orpo_lambda=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_log_odds_matches_direct_formula_in_both_branches(dtype, tol):
    # near 0 only the expm1 form is accurate: in float32, 1 - exp(-1e-5) keeps ~2 digits
    a = torch.tensor([-1e-5, -1e-3, -0.01, -0.5, -0.69, -0.7, -3.0, -30.0], dtype=dtype)
    expected = [x - math.log(-math.expm1(x)) for x in a.tolist()]
    assert P.log_odds(a).tolist() == pytest.approx(expected, rel=tol, abs=tol)


def test_log_odds_clamps_mean_logp_at_minus_1e6():
    # p -> 1 (or a rounding error above 0) gives the finite value at a = -1e-6
    at_clamp = -1e-6 - math.log(-math.expm1(-1e-6))
    assert P.log_odds(t(0.0, 1e-3, -1e-9)).tolist() == pytest.approx([at_clamp] * 3, rel=1e-12)


# ----------------------------------------------------------------------------- KTO


def test_kto_hand_value_one_desirable_one_undesirable():
    logps, ref = t(-3.0, -4.0), t(-3.5, -3.8)  # r = [0.5, -0.2]
    desirable = torch.tensor([True, False])
    beta, z0, lam_d, lam_u = 0.5, 0.1, 1.0, 2.0
    loss, stats = P.kto(logps, ref, desirable, z0, beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u)
    expected = (lam_d * (1 - sig(beta * (0.5 - z0))) + lam_u * (1 - sig(beta * (z0 - -0.2)))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["rewards/chosen"].item() == pytest.approx(0.25)
    assert stats["rewards/rejected"].item() == pytest.approx(-0.1)
    assert stats["rewards/margin"].item() == pytest.approx(0.35)
    assert stats["logratio/mean"].item() == pytest.approx(0.15)
    assert stats["kto/kl_ref_point"].item() == pytest.approx(0.1)
    assert stats["count/desirable"].item() == 1 and stats["count/undesirable"].item() == 1


def test_kto_gradient_signs_and_no_gradient_through_reference_point():
    logps = t(-3.0, -4.0).requires_grad_()
    z0 = P.kto_kl_ref_point(logps * 1.0, t(-3.5, -4.0))  # mean r = (0.5 + 0) / 2, detached
    assert not z0.requires_grad and z0.item() == pytest.approx(0.25)
    loss, _ = P.kto(logps, t(-3.5, -3.8), torch.tensor([True, False]), z0, beta=0.5)
    loss.backward()
    assert logps.grad[0] < 0 < logps.grad[1]  # raise the desirable, lower the undesirable


def test_kto_kl_ref_point_clamps_at_zero():
    assert P.kto_kl_ref_point(t(-5.0, -6.0), t(-4.0, -4.0)).item() == 0.0


def test_kto_batch_without_undesirable_reports_zero_and_count():
    _, stats = P.kto(t(-1.0), t(-2.0), torch.tensor([True]), 0.0, beta=1.0)
    assert stats["rewards/rejected"].item() == 0.0 and stats["count/undesirable"].item() == 0


# ----------------------------------------------------------------------------- all losses


def call_paired(name: str, chosen, rejected, ref_chosen, ref_rejected, lengths_w, lengths_l):
    return P.preference_loss(
        name,
        chosen_logps=chosen,
        rejected_logps=rejected,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
        chosen_lengths=lengths_w,
        rejected_lengths=lengths_l,
        beta=0.1,
        label_smoothing=0.1 if name in ("cdpo", "robust") else 0.0,
    )


PAIRED = [name for name, spec in P.PREFERENCE_LOSSES.items() if spec.paired]


@pytest.mark.parametrize("name", PAIRED)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_log_ratios_stay_finite(name, sign):
    # h = ±(1e4 - 1) for the reference losses; the same extremes in mean log-probs for the others
    big = 1e4
    chosen = torch.tensor([-1.0, -big] if sign > 0 else [-big, -1.0], requires_grad=True)
    rejected = torch.tensor([-big, -1.0] if sign > 0 else [-1.0, -big], requires_grad=True)
    ref = torch.full((2,), -50.0)
    lengths = torch.ones(2)
    loss, stats = call_paired(name, chosen, rejected, ref, ref.clone(), lengths, lengths)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_kto_extreme_log_ratios_stay_finite(sign):
    logps = torch.tensor([sign * 1e4, -sign * 1e4], requires_grad=True)
    loss, stats = P.kto(logps, torch.zeros(2), torch.tensor([True, False]), 0.0, beta=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert all(torch.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("name", PAIRED)
def test_gradient_raises_chosen_and_lowers_rejected(name):
    # chosen and rejected equally likely: every loss wants to move them apart
    chosen = t(-6.0, -9.0).requires_grad_()
    rejected = t(-6.0, -9.0).requires_grad_()
    lengths = t(3.0, 3.0)
    loss, _ = call_paired(name, chosen, rejected, t(-6.0, -9.0), t(-6.0, -9.0), lengths, lengths)
    loss.backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    if name not in ("orpo", "rpo"):  # their NLL term also acts on chosen alone
        assert torch.allclose(chosen.grad, -rejected.grad)


# ----------------------------------------------------------------------------- dispatcher


def test_registry_records_what_each_loss_needs():
    names = {"dpo", "cdpo", "ipo", "hinge", "robust", "dpo_norm", "rpo", "kto", "orpo", "simpo"}
    assert set(P.PREFERENCE_LOSSES) == names
    assert P.PREFERENCE_LOSSES["kto"].paired is False
    assert {n for n, s in P.PREFERENCE_LOSSES.items() if not s.needs_reference} == {"orpo", "simpo"}
    assert {n for n, s in P.PREFERENCE_LOSSES.items() if s.needs_nll} == set()  # nll comes from logps + lengths
    assert {n for n, s in P.PREFERENCE_LOSSES.items() if s.supports_length_normalize} == {
        "dpo",
        "cdpo",
        "ipo",
        "hinge",
        "robust",
    }


def test_every_row_has_a_default_for_each_hyperparameter():
    for name, spec in P.PREFERENCE_LOSSES.items():
        assert set(spec.hyperparameters) <= set(spec.defaults), name
        assert P.loss_defaults(name) == spec.defaults and P.loss_defaults(name) is not spec.defaults


def test_published_defaults():
    assert P.loss_defaults("dpo") == {"beta": 0.1}
    assert P.loss_defaults("ipo") == {"beta": 0.1, "length_normalize": True}
    assert P.loss_defaults("simpo") == {"beta": 2.0, "simpo_gamma": 1.0}
    assert P.loss_defaults("orpo") == {"orpo_lambda": 0.1}
    assert P.loss_defaults("rpo") == {"beta": 0.1, "rpo_alpha": 1.0}
    assert P.loss_defaults("dpo_norm") == {"beta": 5.0}
    assert P.loss_defaults("kto") == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert P.loss_defaults("cdpo")["label_smoothing"] == P.loss_defaults("robust")["label_smoothing"] == 0.1
    with pytest.raises(ConfigError, match="did you mean 'simpo'"):
        P.loss_defaults("simpoo")


def test_modules_split_by_job_and_preference_re_exports():
    assert P.dpo is D.dpo and P.rpo is D.rpo and P.dpo_norm is D.dpo_norm
    assert P.simpo is RF.simpo and P.orpo is RF.orpo and P.log_odds is RF.log_odds
    assert P.kto is K.kto and P.kto_kl_ref_point is K.kto_kl_ref_point


@pytest.mark.parametrize(
    "name, direct",
    [
        ("dpo", lambda: P.dpo(*ref_args(), beta=BETA)),
        ("cdpo", lambda: P.cdpo(*ref_args(), beta=BETA, label_smoothing=0.2)),
        ("robust", lambda: P.robust(*ref_args(), beta=BETA, label_smoothing=0.2)),
        ("ipo", lambda: D.on_mean_logps(P.ipo, *ref_args(), t(4.0, 5.0), t(2.0, 5.0), beta=BETA)),
        ("hinge", lambda: P.hinge(*ref_args(), beta=BETA)),
        ("dpo_norm", lambda: P.dpo_norm(*ref_args(), t(4.0, 5.0), t(2.0, 5.0), beta=BETA)),
        ("rpo", lambda: P.rpo(*ref_args(), t(4.0, 5.0), beta=BETA, rpo_alpha=0.6)),
        ("simpo", lambda: P.simpo(CHOSEN, REJECTED, t(4.0, 5.0), t(2.0, 5.0), beta=BETA, simpo_gamma=0.7)),
        ("orpo", lambda: P.orpo(CHOSEN, REJECTED, t(4.0, 5.0), t(2.0, 5.0), orpo_lambda=0.3)),
    ],
)
def test_dispatcher_passes_each_loss_its_inputs(name, direct):
    loss, stats = P.preference_loss(
        name,
        chosen_logps=CHOSEN,
        rejected_logps=REJECTED,
        ref_chosen_logps=REF_CHOSEN,
        ref_rejected_logps=REF_REJECTED,
        chosen_lengths=t(4.0, 5.0),
        rejected_lengths=t(2.0, 5.0),
        beta=BETA,
        label_smoothing=0.2 if name in ("cdpo", "robust") else 0.0,
        simpo_gamma=0.7,
        orpo_lambda=0.3,
        rpo_alpha=0.6,
    )
    expected_loss, expected_stats = direct()
    assert loss.item() == expected_loss.item()
    assert {k: v.item() for k, v in stats.items()} == {k: v.item() for k, v in expected_stats.items()}


def test_length_normalize_divides_policy_and_reference_by_length():
    lengths_w, lengths_l = t(2.0, 4.0), t(5.0, 1.0)
    loss, stats = P.preference_loss(
        "dpo",
        chosen_logps=CHOSEN,
        rejected_logps=REJECTED,
        ref_chosen_logps=REF_CHOSEN,
        ref_rejected_logps=REF_REJECTED,
        chosen_lengths=lengths_w,
        rejected_lengths=lengths_l,
        beta=BETA,
        length_normalize=True,
    )
    # h per token: [0.5/2 - (-0.2)/5, -1.0/4 - (-0.5)/1] = [0.29, 0.25]
    assert loss.item() == pytest.approx((nls(BETA * 0.29) + nls(BETA * 0.25)) / 2, abs=1e-12)
    assert stats["rewards/chosen"].item() == pytest.approx(BETA * (0.25 - 0.25) / 2)
    # logps and logratio/mean stay summed, per sequence
    assert stats["logps/chosen"].item() == pytest.approx(-6.0)
    assert stats["logratio/mean"].item() == pytest.approx(-0.3)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'simpo'"):
        P.preference_loss("simpoo", chosen_logps=CHOSEN, rejected_logps=REJECTED, beta=0.1)
    with pytest.raises(ConfigError, match="did you mean 'dpo'"):
        P.preference_loss("dpoo", chosen_logps=CHOSEN, rejected_logps=REJECTED, beta=0.1)


def test_missing_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="ref_chosen_logps"):
        P.preference_loss("dpo", chosen_logps=CHOSEN, rejected_logps=REJECTED, beta=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "kto"}, "unpaired"),
        ({"name": "dpo", "label_smoothing": 0.1}, "label_smoothing"),
        ({"name": "simpo"}, "chosen_lengths"),
        ({"name": "rpo"}, "chosen_lengths"),
        ({"name": "dpo", "length_normalize": True}, "chosen_lengths"),
        ({"name": "ipo"}, "chosen_lengths"),  # length-averaged by default
        (
            {"name": "simpo", "chosen_lengths": t(1.0, 1.0), "rejected_lengths": t(1.0, 1.0), "length_normalize": True},
            "length_normalize",
        ),
        ({"name": "dpo", "simpo_gamma": 0.5, "gamma": 0.7}, "disagree"),
    ],
)
def test_dispatcher_config_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=match):
        P.preference_loss(
            name,
            chosen_logps=CHOSEN,
            rejected_logps=REJECTED,
            ref_chosen_logps=REF_CHOSEN,
            ref_rejected_logps=REF_REJECTED,
            beta=0.1,
            **kwargs,
        )


def test_empty_response_length_is_an_error():
    with pytest.raises(NumericalError, match="length 0"):
        P.simpo(CHOSEN, REJECTED, t(0.0, 2.0), t(1.0, 1.0), beta=2.0, simpo_gamma=0.5)


# ----------------------------------------------------------------------------- defaults in the dispatcher


def test_ipo_defaults_to_length_averaged_logps():
    lengths_w, lengths_l = t(2.0, 4.0), t(5.0, 1.0)
    # per-token h (see test_length_normalize_...): [0.29, 0.25]; target 1/(2·0.1) = 5
    loss, stats = P.preference_loss(
        "ipo",
        chosen_logps=CHOSEN,
        rejected_logps=REJECTED,
        ref_chosen_logps=REF_CHOSEN,
        ref_rejected_logps=REF_REJECTED,
        chosen_lengths=lengths_w,
        rejected_lengths=lengths_l,
    )
    assert loss.item() == pytest.approx(((0.29 - 5.0) ** 2 + (0.25 - 5.0) ** 2) / 2, abs=1e-12)  # 22.3733
    assert stats["logratio/mean"].item() == pytest.approx(-0.3)  # still summed
    summed, _ = P.preference_loss(
        "ipo",
        chosen_logps=CHOSEN,
        rejected_logps=REJECTED,
        ref_chosen_logps=REF_CHOSEN,
        ref_rejected_logps=REF_REJECTED,
        length_normalize=False,
    )
    # the summed form (the old default): h = [0.7, -0.5]
    assert summed.item() == pytest.approx(((0.7 - 5.0) ** 2 + (-0.5 - 5.0) ** 2) / 2, abs=1e-12)  # 24.37


def test_dispatcher_fills_published_defaults():
    loss, _ = P.preference_loss(
        "dpo",
        chosen_logps=CHOSEN,
        rejected_logps=REJECTED,
        ref_chosen_logps=REF_CHOSEN,
        ref_rejected_logps=REF_REJECTED,
    )
    assert loss.item() == pytest.approx((nls(0.1 * 0.7) + nls(0.1 * -0.5)) / 2, abs=1e-12)
    lengths_w, lengths_l = t(4.0, 10.0), t(2.0, 5.0)
    sides = {
        "chosen_logps": CHOSEN,
        "rejected_logps": REJECTED,
        "chosen_lengths": lengths_w,
        "rejected_lengths": lengths_l,
    }
    loss, _ = P.preference_loss("simpo", **sides)
    # β = 2, γ = 1: z = 2·(-1.25) - 2·(-3) - 1 = 2.5 and 2·(-0.7) - 2·(-1.3) - 1 = 0.2
    assert loss.item() == pytest.approx((nls(2.5) + nls(0.2)) / 2, abs=1e-12)
    # gamma, the old keyword, is still read as simpo_gamma
    old, _ = P.preference_loss("simpo", **sides, beta=2.0, gamma=1.0)
    assert old.item() == loss.item()


# ----------------------------------------------------------------------------- length-normalised DPO, RPO


def test_dpo_norm_hand_value():
    lengths_w, lengths_l = t(2.0, 4.0), t(5.0, 1.0)
    loss, stats = P.dpo_norm(*ref_args(), lengths_w, lengths_l, beta=5.0)
    # per-token ρ_w = [0.5/2, -1.0/4] = [0.25, -0.25], ρ_l = [-0.2/5, -0.5/1] = [-0.04, -0.5]
    assert loss.item() == pytest.approx((nls(5.0 * 0.29) + nls(5.0 * 0.25)) / 2, abs=1e-12)
    assert stats["rewards/chosen"].item() == pytest.approx(5.0 * (0.25 - 0.25) / 2)
    assert stats["rewards/rejected"].item() == pytest.approx(5.0 * (-0.04 - 0.5) / 2)
    assert stats["logps/chosen"].item() == pytest.approx(-6.0)
    assert stats["logratio/mean"].item() == pytest.approx(-0.3)


def test_rpo_hand_value_and_token_level_nll():
    lengths_w = t(2.0, 8.0)
    loss, stats = P.rpo(*ref_args(), lengths_w, beta=BETA, rpo_alpha=0.5)
    nll = (5.0 + 7.0) / (2 + 8)  # = 1.2 per chosen token; per-sequence means would give (2.5 + 0.875) / 2
    expected = (nls(BETA * 0.7) + nls(BETA * -0.5)) / 2 + 0.5 * nll
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert stats["nll"].item() == pytest.approx(1.2)
    dpo_loss, dpo_stats = P.dpo(*ref_args(), beta=BETA)
    assert {k: v.item() for k, v in stats.items() if k != "nll"} == {k: v.item() for k, v in dpo_stats.items()}
    zero, _ = P.rpo(*ref_args(), lengths_w, beta=BETA, rpo_alpha=0.0)
    assert zero.item() == dpo_loss.item()


def test_rpo_keeps_chosen_likely_where_dpo_lowers_both():
    # a step of gradient descent on DPO alone may lower both log-probs; RPO's NLL raises chosen
    chosen, rejected = t(-4.0).requires_grad_(), t(-4.0).requires_grad_()
    loss, _ = P.rpo(chosen, rejected, t(-4.0), t(-4.0), t(4.0), beta=0.1, rpo_alpha=1.0)
    loss.backward()
    # d/dlogπ_w = -β(1-σ(0)) - α/4 = -0.05 - 0.25
    assert chosen.grad.item() == pytest.approx(-0.05 - 0.25)
    assert rejected.grad.item() == pytest.approx(0.05)
