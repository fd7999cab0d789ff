"""Unit tests for reward-model losses and calibration: hand-computed values and identities."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.errors import ConfigError, DataError
from alignlab.losses import reward as R


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def nls(z: float) -> float:
    """-log σ(z) by hand."""
    return math.log(1.0 + math.exp(-z))


def test_bradley_terry_hand_value_with_margin():
    chosen, rejected, margin = t(2.0, 0.5, -1.0), t(1.0, 1.0, -1.0), t(0.5, 0.0, 1.0)
    loss, stats = R.bradley_terry(chosen, rejected, margin)
    # r_w - r_l - m = [0.5, -0.5, -1.0]
    assert loss.item() == pytest.approx((nls(0.5) + nls(-0.5) + nls(-1.0)) / 3, abs=1e-12)
    # r_w - r_l = [1, -0.5, 0]: right, wrong, tie (1/2)
    assert stats["rewards/accuracy"].item() == pytest.approx(0.5)
    assert stats["rewards/margin"].item() == pytest.approx(0.5 / 3)
    assert stats["rewards/chosen"].item() == pytest.approx(1.5 / 3)
    assert stats["rewards/rejected"].item() == pytest.approx(1.0 / 3)


def test_bradley_terry_without_margin_and_gradient_sign():
    chosen = t(0.3, -0.2).requires_grad_()
    rejected = t(0.1, 0.4).requires_grad_()
    loss, _ = R.bradley_terry(chosen, rejected)
    loss.backward()
    assert loss.item() == pytest.approx((nls(0.2) + nls(-0.6)) / 2, abs=1e-12)
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_bradley_terry_extreme_rewards_are_finite():
    chosen = torch.tensor([1e4, -1e4], requires_grad=True)
    rejected = torch.tensor([-1e4, 1e4], requires_grad=True)
    loss, _ = R.bradley_terry(chosen, rejected)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(chosen.grad).all()


# Two prompts, K = 3. Row 0: rewards [1, 3, 2], ranks [2, 1, 3] -> best-first order 3, 1, 2.
REWARDS = t([1.0, 3.0, 2.0], [0.5, -0.5, 0.0])
RANKS = torch.tensor([[2, 1, 3], [1, 2, 3]])


def test_kwise_is_the_mean_of_the_hand_computed_pairwise_terms():
    loss, stats = R.kwise_pairwise(REWARDS, RANKS)
    # row 0 pairs (better - worse): 3-1, 3-2, 1-2;  row 1: 0.5-(-0.5), 0.5-0, -0.5-0
    row0 = (nls(2.0) + nls(1.0) + nls(-1.0)) / 3
    row1 = (nls(1.0) + nls(0.5) + nls(-0.5)) / 3
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-12)
    assert stats["rewards/accuracy"].item() == pytest.approx(4 / 6)
    assert stats["rewards/margin"].item() == pytest.approx((2 + 1 - 1 + 1 + 0.5 - 0.5) / 6)


def test_kwise_gradient_matches_a_loop_over_pairs():
    rewards = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    ranks = torch.stack([torch.randperm(5) + 1 for _ in range(4)])
    loss, _ = R.kwise_pairwise(rewards, ranks)
    (grad,) = torch.autograd.grad(loss, rewards)

    ref = rewards.detach().clone().requires_grad_()
    terms = [
        -torch.nn.functional.logsigmoid(ref[b, i] - ref[b, j])
        for b in range(4)
        for i in range(5)
        for j in range(5)
        if ranks[b, i] < ranks[b, j]
    ]
    ref_loss = torch.stack(terms).mean()
    ref_loss.backward()
    assert len(terms) == 4 * 10
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-12)
    assert torch.allclose(grad, ref.grad)


def test_plackett_luce_hand_value_k3():
    loss, _ = R.plackett_luce(REWARDS[:1], RANKS[:1])
    # order best-first: 3, 1, 2
    e = math.exp
    expected = -((3 - math.log(e(3) + e(1) + e(2))) + (1 - math.log(e(1) + e(2))) + 0.0)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("listwise", [R.plackett_luce, R.kwise_pairwise])
def test_k2_listwise_losses_equal_bradley_terry(listwise):
    rewards = torch.randn(6, 2, dtype=torch.float64)
    ranks = torch.stack([torch.randperm(2) + 1 for _ in range(6)])
    best = ranks.argmin(-1, keepdim=True)  # (6, 1) column of rank 1
    chosen = rewards.gather(1, best).squeeze(1)
    rejected = rewards.gather(1, 1 - best).squeeze(1)
    loss, stats = listwise(rewards, ranks)
    bt_loss, bt_stats = R.bradley_terry(chosen, rejected)
    assert loss.item() == pytest.approx(bt_loss.item(), abs=1e-12)
    for key, value in bt_stats.items():
        assert stats[key].item() == pytest.approx(value.item(), abs=1e-12)


def test_ranks_must_be_permutations():
    with pytest.raises(DataError, match="permutation"):
        R.kwise_pairwise(REWARDS, torch.tensor([[1, 1, 3], [1, 2, 3]]))
    with pytest.raises(DataError, match="permutation"):
        R.plackett_luce(REWARDS, torch.tensor([[0, 1, 2], [1, 2, 3]]))


def test_bradley_terry_float_margin_equals_the_same_margin_per_pair():
    chosen, rejected = t(2.0, 0.5), t(1.0, 1.0)
    loss, _ = R.bradley_terry(chosen, rejected, 0.5)
    # r_w - r_l - m = [0.5, -1.0]
    assert loss.item() == pytest.approx((nls(0.5) + nls(-1.0)) / 2, abs=1e-12)
    per_pair, _ = R.bradley_terry(chosen, rejected, t(0.5, 0.5))
    assert loss.item() == per_pair.item()


def test_reward_losses_log_the_preference_loss_keys():
    from alignlab.losses.preference import dpo

    _, bt = R.bradley_terry(t(1.0, 0.0), t(0.0, 1.0))
    _, pref = dpo(t(1.0, 0.0), t(0.0, 1.0), t(0.0, 0.0), t(0.0, 0.0), beta=1.0)
    keys = {"rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected"}
    assert set(bt) == keys and keys <= set(pref)
    assert {k: bt[k].item() for k in keys} == {k: pref[k].item() for k in keys}  # same helper, same numbers


def test_reward_centering_penalty_hand_value():
    chosen, rejected = t(1.0, 2.0, -1.0), t(0.5, -3.0, -1.0)
    loss, stats = R.reward_centering_penalty(chosen, rejected, coef=0.01)
    # (r_w + r_l)^2 = [2.25, 1, 4], mean 7.25 / 3
    assert loss.item() == pytest.approx(0.01 * 7.25 / 3, abs=1e-12)
    assert stats["rewards/centering"].item() == pytest.approx(7.25 / 3)
    # it sees only the common offset: halving each pair's sum quarters it and leaves the BT loss alone
    shifted, _ = R.reward_centering_penalty(
        chosen - 0.25 * (chosen + rejected), rejected - 0.25 * (chosen + rejected), 1.0
    )
    bt, _ = R.bradley_terry(chosen, rejected)
    bt_shifted, _ = R.bradley_terry(chosen - 0.25 * (chosen + rejected), rejected - 0.25 * (chosen + rejected))
    assert shifted.item() == pytest.approx(0.25 * 7.25 / 3) and bt_shifted.item() == pytest.approx(bt.item())


def test_reward_magnitude_penalty_hand_value():
    loss, stats = R.reward_magnitude_penalty(t(1.0, -2.0, 3.0), coef=0.1)
    assert loss.item() == pytest.approx(0.1 * 14 / 3)
    assert stats["rewards/mean_sq"].item() == pytest.approx(14 / 3)


def test_registry_and_unknown_name():
    assert set(R.REWARD_LOSSES) == {"bradley_terry", "kwise", "plackett_luce"}
    assert R.REWARD_LOSSES["plackett_luce"].listwise and not R.REWARD_LOSSES["bradley_terry"].listwise
    with pytest.raises(ConfigError, match="did you mean 'plackett_luce'"):
        R.get_reward_loss("plackett-luce")


# ----------------------------------------------------------------------------- calibration


def test_calibration_hand_value():
    # margins [0, log 3, -log 3] -> p = [0.5, 0.75, 0.25]; both orientations, 4 bins:
    #   bin 1: p=0.25 twice, outcomes {1, 0} -> |0.25 - 0.5| · 2/6
    #   bin 2: p=0.5  twice, outcomes {1, 0} -> 0
    #   bin 3: p=0.75 twice, outcomes {1, 0} -> |0.75 - 0.5| · 2/6
    chosen = t(1.0, math.log(3.0), 0.0)
    rejected = t(1.0, 0.0, math.log(3.0))
    out = R.calibration(chosen, rejected, n_bins=4)
    assert out["ece"].item() == pytest.approx(1 / 6)
    assert out["accuracy"].item() == pytest.approx(0.5)
    assert out["margin"].item() == pytest.approx(0.0)
    assert out["bin_count"].tolist() == [0, 2, 2, 2]
    assert out["bin_confidence"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert out["bin_accuracy"].tolist() == pytest.approx([0.0, 0.5, 0.5, 0.5])


def test_calibration_is_small_for_true_rewards_and_detects_overconfidence():
    g = torch.Generator().manual_seed(0)
    n = 20000
    r_a = torch.randn(n, generator=g, dtype=torch.float64)
    r_b = torch.randn(n, generator=g, dtype=torch.float64)
    a_wins = torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(r_a - r_b)  # BT labels
    chosen = torch.where(a_wins, r_a, r_b)
    rejected = torch.where(a_wins, r_b, r_a)
    true = R.calibration(chosen, rejected)
    assert true["ece"].item() < 0.02  # the true rewards are calibrated
    # both orientations of every pair are scored: p lands in bin b exactly when 1 - p lands in
    # bin n_bins-1-b (no p is exactly on a bin edge here)
    assert true["bin_count"].tolist() == true["bin_count"].flip(0).tolist()
    over = R.calibration(5 * chosen, 5 * rejected)  # same ranking, overconfident
    assert over["ece"].item() > 0.1
    assert over["accuracy"].item() == pytest.approx(true["accuracy"].item())
