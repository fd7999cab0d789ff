"""Gap dropout: Bernoulli(p) dropout drawn as geometric gaps has dropout's law, gradient and seeding."""

import math

import pytest
import torch

from alignlab.config import LoraConfig, ModelConfig
from alignlab.models.dropout import GapDropout, dropped_positions, gap_dropout, use_gap_dropout
from alignlab.models.load import apply_lora, load_model
from alignlab.models.policy import disable_dropout
from alignlab.models.presets import build_tiny


def binomial_pmf(k: int, m: int, p: float) -> float:
    return math.comb(m, k) * p**k * (1 - p) ** (m - k)


@pytest.mark.parametrize("p", [0.05, 0.3])
@pytest.mark.parametrize("rounds", [None, 7])  # 7 gaps a round: many rounds, joined
def test_zeros_in_blocks_follow_the_binomial_law(p, rounds):
    """Counts of zeros in blocks of 16 match Binomial(16, p) (chi-square), so zeros are independent with rate p."""
    torch.manual_seed(0)
    n, m = 320_000 if rounds is None else 32_000, 16
    pos = dropped_positions(n, p, rounds=rounds)
    assert pos.dtype == torch.long and bool((pos[1:] > pos[:-1]).all()) and 0 <= int(pos[0]) and int(pos[-1]) < n
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[pos] = True
    counts = torch.bincount(dropped.view(-1, m).sum(1), minlength=m + 1).double()
    blocks = n // m
    expected = torch.tensor([blocks * binomial_pmf(k, m, p) for k in range(m + 1)])
    keep = expected >= 5  # pool the sparse tail into one cell
    obs = torch.cat([counts[keep], counts[~keep].sum().view(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().view(1)])
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)  # far out in the tail of chi2(dof)
    rate = dropped.double().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_every_position_has_rate_p_including_the_first_and_last():
    """An off-by-one in the first gap would show at position 0."""
    torch.manual_seed(1)
    p, trials, n = 0.2, 20_000, 5
    hits = torch.zeros(n)
    for _ in range(trials):
        hits[dropped_positions(n, p)] += 1
    sd = math.sqrt(p * (1 - p) / trials)
    assert ((hits / trials - p).abs() < 5 * sd).all(), hits / trials


def test_forward_scales_the_kept_and_backward_uses_the_same_zeros():
    torch.manual_seed(2)
    x = torch.randn(64, 48) + 3.0  # no exact zeros in x
    x.requires_grad_(True)
    w = torch.randn(64, 48)
    out = gap_dropout(x, 0.25)
    kept = out != 0
    assert torch.allclose(out[kept], x.detach()[kept] / 0.75)
    (out * w).sum().backward()
    assert torch.allclose(x.grad, w * kept / 0.75)
    assert 0.15 < 1 - kept.double().mean().item() < 0.35


def test_non_contiguous_input_and_same_seed_same_mask():
    x = torch.randn(40, 30).t()  # (30, 40), not contiguous
    torch.manual_seed(5)
    a = gap_dropout(x, 0.1)
    torch.manual_seed(5)
    b = gap_dropout(x.contiguous(), 0.1)
    assert torch.equal(a, b)
    assert torch.equal(a != 0, (a != 0) & (x != 0))


def test_off_when_not_training_or_p_zero_and_large_p_falls_back():
    x = torch.randn(10, 10)
    assert gap_dropout(x, 0.3, training=False) is x
    assert gap_dropout(x, 0.0) is x
    torch.manual_seed(0)
    got = gap_dropout(x, 0.7)  # above GAP_MAX_P: torch's own dropout, the same stream
    torch.manual_seed(0)
    assert torch.equal(got, torch.nn.functional.dropout(x, 0.7, True))


def test_lora_models_get_gap_dropout_that_disable_dropout_and_eval_still_reach():
    model, _ = build_tiny(seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    torch.manual_seed(3)
    model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.3))
    plain = [m for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0]
    assert len(plain) == 2 * 7  # seven adapted projections per layer
    assert use_gap_dropout(model) == len(plain)
    gaps = [m for m in model.modules() if isinstance(m, GapDropout)]
    assert len(gaps) == len(plain) and all(m.p == 0.3 for m in gaps)
    ids = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight.normal_()
        model.train()
        noisy = model(ids).logits
        model.eval()
        clean = model(ids).logits
        assert not torch.allclose(noisy, clean)
        model.train()
        disable_dropout(model)
        assert torch.allclose(model(ids).logits, clean, atol=1e-6)


def test_load_model_swaps_dropout_for_training_only():
    cfg = ModelConfig(name_or_path="tiny", lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=0.05))
    trained = load_model(cfg).model
    assert any(isinstance(m, GapDropout) for m in trained.modules())
    assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in trained.modules())
    frozen = load_model(cfg, for_training=False).model
    assert not any(isinstance(m, GapDropout) for m in frozen.modules())
