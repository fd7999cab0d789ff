"""PPO policy / value losses, GRPO, REINFORCE, entropy and explained variance, by hand."""

import math

import pytest
import torch

from alignlab.errors import ConfigError, NumericalError
from alignlab.losses.ppo import (
    GRPO_LOSS_TYPES,
    POLICY_REDUCTIONS,
    entropy_from_logits,
    explained_variance,
    grpo_loss,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    token_entropy,
)

EPS = 0.2
# Five tokens, ε = 0.2 (ratio ρ, advantage A, per-token loss max(−Aρ, −A·clip(ρ))):
#   ρ=1.1 A=+1: max(−1.1, −1.1) = −1.1   inside the range
#   ρ=1.5 A=+1: max(−1.5, −1.2) = −1.2   clipped (upside capped)
#   ρ=0.5 A=+1: max(−0.5, −0.8) = −0.5   not clipped (pessimistic term is the unclipped one)
#   ρ=0.5 A=−1: max( 0.5,  0.8) =  0.8   clipped
#   ρ=1.5 A=−1: max( 1.5,  1.2) =  1.5   not clipped
RATIOS = [1.1, 1.5, 0.5, 0.5, 1.5]
ADVS = [1.0, 1.0, 1.0, -1.0, -1.0]
PER_TOKEN = [-1.1, -1.2, -0.5, 0.8, 1.5]
CLIPPED = [0, 1, 0, 1, 0]


def _policy_inputs():
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0]])
    new = old + torch.tensor([RATIOS]).log()
    return new, old, torch.tensor([ADVS]), torch.ones(1, 5)


def test_ppo_policy_loss_hand_values_token():
    new, old, adv, mask = _policy_inputs()
    loss, stats = ppo_policy_loss(new, old, adv, mask, EPS)
    assert loss.item() == pytest.approx(sum(PER_TOKEN) / 5, abs=1e-6)  # −0.1
    assert stats["policy/clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["policy/ratio_mean"].item() == pytest.approx(sum(RATIOS) / 5, abs=1e-6)
    # k3 of π_old vs π_θ with samples from π_old: ρ − 1 − log ρ
    approx_kl = sum(r - 1 - math.log(r) for r in RATIOS) / 5
    assert stats["policy/approx_kl"].item() == pytest.approx(approx_kl, abs=1e-6)


def test_ppo_policy_gradient_is_zero_on_clipped_tokens():
    new, old, adv, mask = _policy_inputs()
    new.requires_grad_(True)
    loss, _ = ppo_policy_loss(new, old, adv, mask, EPS)
    loss.backward()
    # d/dlogπ of −Aρ is −Aρ; divided by 5 tokens; 0 where the clipped term is active
    expected = [0.0 if c else -a * r / 5 for a, r, c in zip(ADVS, RATIOS, CLIPPED)]
    assert new.grad[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_ppo_policy_loss_sequence_reduction_hand_value():
    # Same five tokens as two rows: row 0 = tokens 0..2, row 1 = tokens 3..4 + one pad.
    new5, old5, adv5, _ = _policy_inputs()
    pad = torch.zeros(1, 1)
    new = torch.cat([new5[:, :3], torch.cat([new5[:, 3:], pad], -1)])
    old = torch.cat([old5[:, :3], torch.cat([old5[:, 3:], pad], -1)])
    adv = torch.cat([adv5[:, :3], torch.cat([adv5[:, 3:], pad], -1)])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    seq, _ = ppo_policy_loss(new, old, adv, mask, EPS, reduction="sequence")
    row0 = sum(PER_TOKEN[:3]) / 3
    row1 = sum(PER_TOKEN[3:]) / 2
    assert seq.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    tok, stats = ppo_policy_loss(new, old, adv, mask, EPS, reduction="token")
    assert tok.item() == pytest.approx(sum(PER_TOKEN) / 5, abs=1e-6)
    assert stats["policy/clipfrac"].item() == pytest.approx(2 / 5)
    assert seq.item() != pytest.approx(tok.item())  # the two reductions really differ here


def _random_batch(B=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    new = old + 0.3 * torch.randn(B, T, generator=g)
    ref = old + 0.3 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, T, generator=g)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return new, old, ref, adv, mask


def _with_empty_row(*tensors, garbage=float("nan")):
    """Insert a fully masked row (holding garbage) in the middle of the batch."""
    out = []
    for t in tensors:
        g = torch.full_like(t[:1], garbage)
        out.append(torch.cat([t[:1], g, t[1:]]))
    return out


@pytest.mark.parametrize("reduction", sorted(POLICY_REDUCTIONS))
def test_empty_row_and_padding_garbage_do_not_change_policy_loss(reduction):
    new, old, _, adv, mask = _random_batch()
    base, base_stats = ppo_policy_loss(new, old, adv, mask, EPS, reduction=reduction)
    # garbage in the padding of the existing rows
    pad = ~mask.bool()
    new_g = new.masked_fill(pad, 7.0)
    old_g = old.masked_fill(pad, float("nan"))
    adv_g = adv.masked_fill(pad, 1e9)
    loss_g, _ = ppo_policy_loss(new_g, old_g, adv_g, mask, EPS, reduction=reduction)
    assert loss_g.item() == pytest.approx(base.item(), abs=1e-6)
    # an extra row with no valid token (and NaN everywhere)
    new_e, old_e, adv_e = _with_empty_row(new, old, adv)
    mask_e = torch.cat([mask[:1], torch.zeros(1, mask.shape[1]), mask[1:]])
    new_e.requires_grad_(True)
    loss_e, stats_e = ppo_policy_loss(new_e, old_e, adv_e, mask_e, EPS, reduction=reduction)
    assert loss_e.item() == pytest.approx(base.item(), abs=1e-6)
    for key in base_stats:
        assert stats_e[key].item() == pytest.approx(base_stats[key].item(), abs=1e-6)
    loss_e.backward()
    assert torch.isfinite(new_e.grad).all() and (new_e.grad[1] == 0).all()


def test_empty_row_does_not_change_grpo_and_reinforce():
    new, old, ref, _, mask = _random_batch()
    seq_adv = torch.tensor([1.0, -0.5, 2.0])
    new_e, old_e, ref_e = _with_empty_row(new, old, ref)
    adv_e = torch.tensor([1.0, float("nan"), -0.5, 2.0])
    mask_e = torch.cat([mask[:1], torch.zeros(1, mask.shape[1]), mask[1:]])
    base, _ = grpo_loss(new, old, ref, seq_adv, mask, EPS, beta=0.1, loss_type="grpo")
    with_empty, _ = grpo_loss(new_e, old_e, ref_e, adv_e, mask_e, EPS, beta=0.1, loss_type="grpo")
    assert with_empty.item() == pytest.approx(base.item(), abs=1e-6)
    base_r, _ = reinforce_loss(new, seq_adv, mask)
    with_empty_r, _ = reinforce_loss(new_e, adv_e, mask_e)
    assert with_empty_r.item() == pytest.approx(base_r.item(), abs=1e-6)


def test_all_masked_batch_raises():
    new, old, _, adv, mask = _random_batch()
    for reduction in POLICY_REDUCTIONS:
        with pytest.raises(NumericalError):
            ppo_policy_loss(new, old, adv, torch.zeros_like(mask), EPS, reduction=reduction)


def test_policy_loss_errors():
    new, old, _, adv, mask = _random_batch()
    with pytest.raises(ConfigError, match="'sequence'"):
        ppo_policy_loss(new, old, adv, mask, EPS, reduction="sequnce")
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(new, old, adv[:, 0], mask, EPS)  # (B,) advantages must not broadcast


# ---------------------------------------------------------------------------------------- value


def test_ppo_value_loss_hand_values():
    # ε_v = 0.2; columns: V, V_old, R  ->  V_clip, (V−R)², (V_clip−R)², ½·max
    #   1.5 1.0 2.0 -> 1.2  0.25 0.64 -> 0.32   clipped
    #   1.5 1.0 1.0 -> 1.2  0.25 0.04 -> 0.125  not clipped
    #   0.5 1.0 0.0 -> 0.8  0.25 0.64 -> 0.32   clipped
    #   1.1 1.0 3.0 -> 1.1  3.61 3.61 -> 1.805  inside the range
    values = torch.tensor([[1.5, 1.5, 0.5, 1.1, 99.0]])
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, -99.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0, 3.0, 42.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx((0.32 + 0.125 + 0.32 + 1.805) / 4, abs=1e-6)
    assert stats["value/clipfrac"].item() == pytest.approx(0.5)
    assert stats["value/mean"].item() == pytest.approx((1.5 + 1.5 + 0.5 + 1.1) / 4, abs=1e-6)
    assert stats["value/error"].item() == pytest.approx((0.25 + 0.25 + 0.25 + 3.61) / 4, abs=1e-6)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -100.0, -100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    # a constant prediction explains nothing
    assert explained_variance(torch.full_like(returns, 3.0), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    # V = R − e with e = [1, −1, 0, 1, −1] on valid tokens: Var[e] = 1 (n−1 = 4), Var[R] = 2.5
    e = torch.tensor([[1.0, -1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    assert explained_variance(returns - e, returns, mask).item() == pytest.approx(1 - 1.0 / 2.5, abs=1e-6)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


# -------------------------------------------------------------------------------------- entropy


def test_entropy_uniform_and_peaked():
    V = 8
    logits = torch.zeros(2, 3, V)
    logits[1, :, 1:] = float("-inf")  # row 1 is deterministic: entropy 0, no NaN
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ent = token_entropy(logits)
    assert ent[0].tolist() == pytest.approx([math.log(V)] * 3, abs=1e-6)
    assert ent[1].tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert entropy_from_logits(logits, mask).item() == pytest.approx(3 * math.log(V) / 5, abs=1e-6)


def test_entropy_matches_categorical_and_chunking():
    logits = torch.randn(3, 5, 11) * 3
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    ref = torch.distributions.Categorical(logits=logits).entropy()  # (3, 5)
    assert torch.allclose(token_entropy(logits), ref, atol=1e-5)
    assert torch.allclose(token_entropy(logits, chunk_tokens=2), ref, atol=1e-5)
    expected = (ref * mask).sum() / mask.sum()
    assert entropy_from_logits(logits, mask).item() == pytest.approx(expected.item(), abs=1e-5)
    # gradients agree with the reference
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    token_entropy(a, chunk_tokens=4).sum().backward()
    torch.distributions.Categorical(logits=b).entropy().sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-5)
    # bf16 logits are upcast per chunk
    half = token_entropy(logits.bfloat16())
    assert half.dtype == torch.float32 and torch.allclose(half, ref, atol=0.1)


# ----------------------------------------------------------------------------------------- GRPO


def _grpo_inputs():
    # row 0: 2 valid tokens, row 1: 3; ratio 1 everywhere (new = old)
    # ℓ = logπ − logπ_ref: row 0 [0, log 2], row 1 [−1, 0, 0]
    new = torch.tensor([[-1.0, math.log(0.5), 5.0], [-2.0, -0.3, -0.7]])
    ref = torch.tensor([[-1.0, math.log(0.25), 0.0], [-1.0, -0.3, -0.7]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0])
    return new, new.clone(), ref, adv, mask


K3_LOG2 = 0.5 - 1 + math.log(2)  # 0.193147
K3_M1 = math.e - 2  # 0.718282


def test_grpo_loss_hand_values():
    new, old, ref, adv, mask = _grpo_inputs()
    beta = 0.1
    # per token: −A·1 + β·k3
    row0 = [-1.0 + 0.0, -1.0 + beta * K3_LOG2]
    row1 = [1.0 + beta * K3_M1, 1.0, 1.0]
    loss, stats = grpo_loss(new, old, ref, adv, mask, EPS, beta, loss_type="grpo")
    assert loss.item() == pytest.approx((sum(row0) / 2 + sum(row1) / 3) / 2, abs=1e-6)
    assert stats["kl"].item() == pytest.approx((K3_LOG2 + K3_M1) / 5, abs=1e-6)
    assert stats["policy/clipfrac"].item() == 0.0
    assert stats["policy/ratio_mean"].item() == pytest.approx(1.0)
    dr, _ = grpo_loss(new, old, ref, adv, mask, EPS, beta, loss_type="dr_grpo", max_len=4)
    assert dr.item() == pytest.approx((sum(row0) + sum(row1)) / (2 * 4), abs=1e-6)
    dr_t, _ = grpo_loss(new, old, ref, adv, mask, EPS, beta, loss_type="dr_grpo")  # max_len = T = 3
    assert dr_t.item() == pytest.approx((sum(row0) + sum(row1)) / (2 * 3), abs=1e-6)


def test_grpo_kl_gradient_pulls_towards_reference():
    new, old, ref, adv, mask = _grpo_inputs()
    zero_adv = torch.zeros_like(adv)
    new.requires_grad_(True)
    loss, _ = grpo_loss(new, old, ref, zero_adv, mask, EPS, beta=1.0)
    loss.backward()
    # d k3 / dℓ = 1 − e^{−ℓ}: positive for ℓ > 0 (push logπ down), negative for ℓ < 0
    assert new.grad[0, 1] > 0 and new.grad[1, 0] < 0
    assert new.grad[0, 0] == 0 and new.grad[0, 2] == 0


def test_grpo_kl_estimator_k2_gradient_is_beta_times_log_ratio():
    # zero advantages and ρ = 1: only the KL term acts. With k2 = ½ℓ² its per-token gradient is
    # β·ℓ, over the per-sequence mean: row 0 has 2 tokens, row 1 one token; B = 2
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0], [-0.2, 0.0]])  # ℓ = [0.5, -1.0], [-0.3]
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(2), mask, EPS, beta=0.4, kl_estimator="k2")
    assert loss.item() == pytest.approx(0.4 * ((0.125 + 0.5) / 2 + 0.045) / 2, abs=1e-6)
    assert stats["kl"].item() == pytest.approx((0.125 + 0.5 + 0.045) / 3, abs=1e-6)
    loss.backward()
    expected = torch.tensor([[0.4 * 0.5 / 2 / 2, 0.4 * -1.0 / 2 / 2], [0.4 * -0.3 / 2, 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-6)


def test_dr_grpo_is_length_unbiased():
    # Two responses with the same advantage, lengths 1 and 3. GRPO gives each token of the short
    # response 3× the gradient of a token of the long one; Dr. GRPO weighs all tokens the same.
    new = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, 1.0])
    grads = {}
    for loss_type in GRPO_LOSS_TYPES:
        if new.grad is not None:
            new.grad = None
        loss, _ = grpo_loss(new, new.detach(), new.detach(), adv, mask, EPS, beta=0.0, loss_type=loss_type, max_len=8)
        loss.backward()
        grads[loss_type] = new.grad.clone()
    assert grads["grpo"][0, 0].item() == pytest.approx(-1 / 2)  # −A · 1/|y_0| · 1/G
    assert grads["grpo"][1, 0].item() == pytest.approx(-1 / 6)
    assert grads["dr_grpo"][0, 0].item() == pytest.approx(-1 / 16)  # −A / (G · max_len)
    assert grads["dr_grpo"][1].tolist() == pytest.approx([-1 / 16] * 3)


def test_grpo_errors():
    new, old, ref, adv, mask = _grpo_inputs()
    with pytest.raises(ConfigError, match="'dr_grpo'"):
        grpo_loss(new, old, ref, adv, mask, EPS, 0.1, loss_type="dr-grpo")
    with pytest.raises(ValueError, match="one per sequence"):
        grpo_loss(new, old, ref, adv[:, None].expand_as(new), mask, EPS, 0.1)


# ------------------------------------------------------------------------------------ REINFORCE


def test_reinforce_loss_hand_value_and_gradient():
    logprobs = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = reinforce_loss(logprobs, adv, mask)
    # seq_logps = [−3, −0.5];  loss = mean(−2·(−3), 1·(−0.5)) = (6 − 0.5)/2 = 2.75
    assert loss.item() == pytest.approx(2.75)
    assert stats["policy/seq_logps_mean"].item() == pytest.approx(-1.75)
    loss.backward()
    # d/dlogπ = −A_i / B on valid tokens: row 0 −2/2, row 1 +1/2
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0]]))
