"""GAE, whitening, RLOO / GRPO group advantages and the best-of-n KL, against hand computations."""

import math

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.losses.advantages import (
    GROUP_ADVANTAGES,
    best_of_n_kl,
    dapo_keep_groups,
    gae,
    grpo_advantages,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    whiten_advantages,
)

# Two right-padded rows of different lengths (4 and 2 valid tokens); padding holds garbage that
# must never be read.
MASK = [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
REWARDS = [[0.1, -0.2, 0.0, 1.0, 50.0], [0.5, 2.0, 50.0, 50.0, 50.0]]
VALUES = [[0.3, 0.2, 0.6, 0.9, 100.0], [1.0, 1.5, 100.0, 100.0, 100.0]]


def hand_gae(rewards, values, length, gamma, lam):
    """GAE for one row, written out with plain floats: the episode ends after ``length`` tokens."""
    adv = [0.0] * length
    next_value, next_adv = 0.0, 0.0
    for t in range(length - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        adv[t] = delta + gamma * lam * next_adv
        next_value, next_adv = values[t], adv[t]
    returns = [a + v for a, v in zip(adv, values)]
    return adv, returns


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_gae_matches_hand_loop_with_padding():
    gamma, lam = 0.9, 0.8
    adv, ret = gae(_t(REWARDS), _t(VALUES), torch.tensor(MASK), gamma, lam)
    for row, length in enumerate([4, 2]):
        a, r = hand_gae(REWARDS[row], VALUES[row], length, gamma, lam)
        pad = [0.0] * (5 - length)
        assert adv[row].tolist() == pytest.approx(a + pad, abs=1e-6)
        assert ret[row].tolist() == pytest.approx(r + pad, abs=1e-6)


def test_gae_literal_numbers():
    # One row r = [0, 0, 1], V = [0.5, 0.5, 0.5], γ = 0.5, λ = 1:
    #   δ_2 = 1 − 0.5 = 0.5                          A_2 = 0.5
    #   δ_1 = 0 + 0.5·0.5 − 0.5 = −0.25              A_1 = −0.25 + 0.5·0.5 = 0
    #   δ_0 = −0.25                                  A_0 = −0.25 + 0.5·0 = −0.25
    adv, ret = gae(_t([[0.0, 0.0, 1.0]]), _t([[0.5, 0.5, 0.5]]), torch.ones(1, 3), 0.5, 1.0)
    assert adv.tolist()[0] == pytest.approx([-0.25, 0.0, 0.5])
    assert ret.tolist()[0] == pytest.approx([0.25, 0.5, 1.0])  # = discounted reward-to-go


def test_gae_gamma1_lambda1_gives_reward_to_go():
    adv, ret = gae(_t(REWARDS), _t(VALUES), torch.tensor(MASK), 1.0, 1.0)
    # reward-to-go: row 0 [0.9, 0.8, 1.0, 1.0], row 1 [2.5, 2.0]
    assert ret[0].tolist() == pytest.approx([0.9, 0.8, 1.0, 1.0, 0.0], abs=1e-6)
    assert ret[1].tolist() == pytest.approx([2.5, 2.0, 0.0, 0.0, 0.0], abs=1e-6)
    assert adv[0].tolist() == pytest.approx([0.6, 0.6, 0.4, 0.1, 0.0], abs=1e-6)


def test_gae_lambda0_gives_one_step_td():
    gamma = 0.9
    adv, _ret = gae(_t(REWARDS), _t(VALUES), torch.tensor(MASK), gamma, 0.0)
    # δ_t = r_t + γ V_{t+1} − V_t with V = 0 after the last valid token
    row0 = [0.1 + 0.9 * 0.2 - 0.3, -0.2 + 0.9 * 0.6 - 0.2, 0.0 + 0.9 * 0.9 - 0.6, 1.0 - 0.9, 0.0]
    row1 = [0.5 + 0.9 * 1.5 - 1.0, 2.0 - 1.5, 0.0, 0.0, 0.0]
    assert adv[0].tolist() == pytest.approx(row0, abs=1e-6)
    assert adv[1].tolist() == pytest.approx(row1, abs=1e-6)


def test_gae_left_padding_and_holes_equal_compacted_row():
    gamma, lam = 0.95, 0.9
    r = [0.3, -0.1, 0.7]
    v = [0.2, 0.4, -0.3]
    a_ref, ret_ref = hand_gae(r, v, 3, gamma, lam)
    # valid tokens at t = 1, 2, 4 (left pad + a hole), garbage elsewhere
    rewards = _t([[9.0, 0.3, -0.1, 9.0, 0.7]])
    values = _t([[9.0, 0.2, 0.4, 9.0, -0.3]])
    mask = torch.tensor([[0, 1, 1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert adv[0, [1, 2, 4]].tolist() == pytest.approx(a_ref, abs=1e-6)
    assert ret[0, [1, 2, 4]].tolist() == pytest.approx(ret_ref, abs=1e-6)
    assert adv[0, [0, 3]].tolist() == [0.0, 0.0]


def test_gae_outputs_are_detached():
    values = _t(VALUES).requires_grad_(True)
    adv, ret = gae(_t(REWARDS), values, torch.tensor(MASK), 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad


def test_whiten_advantages_over_valid_tokens_only():
    adv = _t([[1.0, 2.0, 3.0, 1000.0], [4.0, 5.0, -1000.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = whiten_advantages(adv, mask)
    valid = out[mask.bool()]
    # valid values 1..5: mean 3, unbiased std sqrt(2.5)
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-5)
    assert valid.tolist() == pytest.approx([(x - 3) / math.sqrt(2.5) for x in [1, 2, 3, 4, 5]], abs=1e-5)
    assert out[~mask.bool()].tolist() == [0.0, 0.0, 0.0]
    kept = whiten_advantages(adv, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(3.0, abs=1e-5)


def test_rloo_hand_values():
    # k = 3; prompt 0 scores [1, 2, 3], prompt 1 scores [10, 20, 30]
    adv = rloo_advantages(_t([1.0, 2.0, 3.0, 10.0, 20.0, 30.0]), 3)
    # A_0 = 1 − (2+3)/2 = −1.5, A_1 = 2 − (1+3)/2 = 0, A_2 = 3 − (1+2)/2 = 1.5
    assert adv.tolist() == pytest.approx([-1.5, 0.0, 1.5, -15.0, 0.0, 15.0])
    # k = 2: A = r_i − r_other
    assert rloo_advantages(_t([1.0, 4.0]), 2).tolist() == pytest.approx([-3.0, 3.0])


def test_rloo_errors():
    with pytest.raises(ConfigError, match=">= 2"):
        rloo_advantages(_t([1.0, 2.0]), 1)
    with pytest.raises(ConfigError, match="groups of 3"):
        rloo_advantages(_t([1.0, 2.0, 3.0, 4.0]), 3)


def test_grpo_hand_values():
    scores = _t([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    # group 0: mean 3, sample std sqrt(((−2)² + (−1)² + 3²)/2) = sqrt(7); group 1: all equal → 0
    s = math.sqrt(7.0)
    adv = grpo_advantages(scores, 3, eps=1e-4)
    assert adv.tolist() == pytest.approx([-2 / (s + 1e-4), -1 / (s + 1e-4), 3 / (s + 1e-4), 0, 0, 0], abs=1e-6)
    dr = grpo_advantages(scores, 3, scale_by_std=False)
    assert dr.tolist() == pytest.approx([-2.0, -1.0, 3.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_group_advantage_registry():
    scores = _t([0.0, 1.0, 1.0, 1.0])
    assert GROUP_ADVANTAGES["rloo"](scores, 2).tolist() == pytest.approx([-1.0, 1.0, 0.0, 0.0])
    assert GROUP_ADVANTAGES["dr_grpo"](scores, 2).tolist() == pytest.approx([-0.5, 0.5, 0.0, 0.0])
    # std of [0, 1] is 1/sqrt(2)
    g = 0.5 / (1 / math.sqrt(2) + 1e-4)
    assert GROUP_ADVANTAGES["grpo"](scores, 2).tolist() == pytest.approx([-g, g, 0.0, 0.0], abs=1e-6)


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    assert best_of_n_kl(64) > best_of_n_kl(16) > best_of_n_kl(4)
    with pytest.raises(ConfigError):
        best_of_n_kl(0)
    with pytest.raises(ConfigError):
        best_of_n_kl(2.5)


# ------------------------------------------------------------------------------------ REINFORCE++


def test_reinforce_pp_advantages_hand_values_global_normalisation():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    ref = torch.zeros(2, 3)
    logprobs = torch.tensor([[0.2, -0.4, 0.0], [0.0, 0.6, 0.2]])  # k1 = ℓ = logprobs here
    scores = torch.tensor([1.0, -1.0])
    adv, returns = reinforce_pp_advantages(scores, logprobs, ref, mask, beta=0.5)
    # per-token rewards -β·ℓ, plus the score on the last valid token:
    #   row 0: [-0.1, 0.2 + 1]        -> returns-to-go [1.1, 1.2]
    #   row 1: [0, -0.3, -0.1 - 1]    -> returns-to-go [-1.4, -1.4, -1.1]
    expected_returns = [[1.1, 1.2, 0.0], [-1.4, -1.4, -1.1]]
    assert torch.allclose(returns, torch.tensor(expected_returns), atol=1e-6)
    flat = [1.1, 1.2, -1.4, -1.4, -1.1]  # the 5 valid tokens of the whole batch
    mean = sum(flat) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / 4)  # Bessel-corrected, as whiten
    expected = [[(1.1 - mean) / std, (1.2 - mean) / std, 0.0], [(x - mean) / std for x in (-1.4, -1.4, -1.1)]]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-5)
    # global, not per response: row 0's advantages are not centred on their own
    assert adv[0, :2].mean() > 0.5


# ------------------------------------------------------------------------------------ DAPO


def test_dapo_keep_groups_drops_groups_with_equal_scores():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    keep = dapo_keep_groups(scores, 3)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 3
    with pytest.raises(ConfigError, match="groups of 4"):
        dapo_keep_groups(scores, 4)


def test_overlong_penalty_hand_values():
    # L_max = 10, L_cache = 4: no penalty up to 6 tokens, a ramp to -1 at 10, -1 beyond
    out = overlong_penalty(torch.tensor([3, 6, 7, 10, 11]), max_len=10, cache_len=4)
    assert out.tolist() == pytest.approx([0.0, 0.0, -0.25, -1.0, -1.0])
    with pytest.raises(ConfigError, match="cache_len"):
        overlong_penalty(torch.tensor([3]), max_len=10, cache_len=0)
