"""KL estimates, the best-of-n frontier and the Gao et al. over-optimisation fits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from alignlab.eval import frontier, kl, overopt


# ----------------------------------------------------------------------------- KL
def test_response_kl_hand_values():
    lp = [[-1.0, -2.0], [-0.5]]
    ref = [[-1.5, -1.0], [-0.5]]
    out = kl.response_kl(lp, ref)
    # response 0: ℓ = [0.5, −1.0]; k1 = −0.5; k3 = (e^−0.5 − 1 + 0.5) + (e^1 − 1 − 1)
    assert out["k1"].tolist() == pytest.approx([-0.5, 0.0])
    k3_0 = (math.exp(-0.5) - 0.5) + (math.exp(1.0) - 2.0)
    assert out["k3"].tolist() == pytest.approx([k3_0, 0.0])
    summ = kl.kl_summary(lp, ref)
    assert summ["k1"]["mean"] == pytest.approx(-0.25)
    assert summ["k1"]["se"] == pytest.approx(np.std([-0.5, 0.0], ddof=1) / math.sqrt(2))


def test_padded_input_with_mask_equals_ragged():
    lp = np.array([[-1.0, -2.0, 9.0], [-0.5, 9.0, 9.0]])
    ref = np.array([[-1.5, -1.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    a = kl.response_kl(lp, ref, mask)
    b = kl.response_kl([[-1.0, -2.0], [-0.5]], [[-1.5, -1.0], [-0.5]])
    assert a["k1"].tolist() == pytest.approx(b["k1"].tolist()) and a["k3"].tolist() == pytest.approx(b["k3"].tolist())


def test_numpy_k3_equals_the_training_estimator():
    torch = pytest.importorskip("torch")
    from alignlab.losses.kl import kl_estimate

    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = torch.ones(4, 6)
    ours = kl.response_kl(lp, ref, mask)
    for name in ("k1", "k3"):
        theirs = kl_estimate(lp, ref, name).sum(dim=1).double().numpy()
        assert ours[name] == pytest.approx(theirs, rel=1e-5, abs=1e-5)


def test_sampled_kl_is_unbiased_on_a_known_pair():
    # π = N-free toy: a categorical over 3 tokens, one-token responses. KL(π‖π_ref) exactly:
    p = np.array([0.7, 0.2, 0.1])
    q = np.array([0.4, 0.4, 0.2])
    exact = float(np.sum(p * np.log(p / q)))
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=20000, p=p)
    out = kl.kl_summary([[math.log(p[t])] for t in y], [[math.log(q[t])] for t in y])
    for name in ("k1", "k3"):
        assert abs(out[name]["mean"] - exact) < 4 * out[name]["se"]
    assert out["k3"]["se"] < out["k1"]["se"]  # the low-variance estimator


# ----------------------------------------------------------------------------- best-of-n
def test_best_of_n_kl_curve():
    curve = frontier.best_of_n_kl_curve()
    assert [p["n"] for p in curve] == list(range(1, 65))
    assert curve[0]["kl"] == 0.0
    assert curve[1]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert curve[-1]["kl"] == pytest.approx(math.log(64) - 63 / 64)


def test_expected_max_equals_the_mean_over_all_subsets():
    scores = [0.3, -1.0, 2.5, 0.9, 1.7, 0.0]
    for n in range(1, 7):
        brute = np.mean([max(c) for c in itertools.combinations(scores, n)])
        assert frontier.expected_max_of_n(scores, n) == pytest.approx(brute)
    with pytest.raises(ValueError):
        frontier.expected_max_of_n(scores, 7)


def test_expected_max_selected_by_proxy():
    gold = [1.0, 2.0, 3.0]
    proxy = [3.0, 2.0, 1.0]  # the proxy prefers the worst gold
    brute = np.mean([gold[max(c, key=lambda i: proxy[i])] for c in itertools.combinations(range(3), 2)])
    assert frontier.expected_max_of_n(gold, 2, by=proxy) == pytest.approx(brute)


def test_best_of_n_gold_curve_rises_and_stops_at_the_smallest_group():
    rng = np.random.default_rng(0)
    groups = [rng.normal(size=16).tolist() for _ in range(5)] + [rng.normal(size=8).tolist()]
    curve = frontier.best_of_n_gold(groups)
    assert [p["n"] for p in curve] == list(range(1, 9))
    golds = [p["gold"] for p in curve]
    assert all(b >= a for a, b in itertools.pairwise(golds))
    assert curve[0]["gold"] == pytest.approx(np.mean([np.mean(g) for g in groups]))


def test_checkpoint_points():
    rows = {
        "sft": [
            {"gold": 1.0, "logprobs": [-1.0], "ref_logprobs": [-1.0]},
            {"gold": 3.0, "logprobs": [-1.0], "ref_logprobs": [-1.0]},
        ],
        "ppo": [{"gold": 4.0}, {"gold": 6.0}],
    }
    pts = frontier.checkpoint_points(rows)
    assert pts[0]["name"] == "sft" and pts[0]["kl"] == 0.0 and pts[0]["gold"] == 2.0
    assert pts[1]["kl"] is None and pts[1]["gold"] == 5.0 and pts[1]["n"] == 2


# ----------------------------------------------------------------------------- over-optimisation
@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.3, 0.4), ("rl", 0.9, 0.35)])
def test_fit_recovers_known_coefficients(form, alpha, beta):
    kl_values = np.linspace(0.0, 30.0, 25)
    gain = overopt.predict(form, kl_values, alpha, beta)
    out = overopt.fit(form, kl_values, gain)
    assert out["alpha"] == pytest.approx(alpha, abs=1e-9) and out["beta"] == pytest.approx(beta, abs=1e-9)
    assert out["r2"] == pytest.approx(1.0)
    # with noise: still close, R² below 1
    rng = np.random.default_rng(0)
    noisy = overopt.fit(form, kl_values, gain + rng.normal(0, 0.02, size=gain.shape))
    assert noisy["alpha"] == pytest.approx(alpha, abs=0.05) and noisy["beta"] == pytest.approx(beta, abs=0.05)
    assert 0.9 < noisy["r2"] < 1.0


def test_fit_peaks_and_degenerate_inputs():
    bon = overopt.fit_bon([1.0, 4.0, 9.0], overopt.predict("bon", [1.0, 4.0, 9.0], 2.0, 0.5))
    assert bon["peak_kl"] == pytest.approx((2.0 / (2 * 0.5)) ** 2)  # d* = α/2β
    rl = overopt.fit_rl([1.0, 4.0, 9.0], overopt.predict("rl", [1.0, 4.0, 9.0], 1.0, 0.5))
    assert rl["peak_kl"] == pytest.approx(math.exp(1.0 / 0.5 - 1.0) ** 2)  # log d* = α/β − 1
    assert overopt.fit_bon([0.0, 2.0], [0.0, 1.0]) is None  # one informative point


def test_order_weights_are_a_distribution():
    for N, n in [(1, 1), (8, 3), (64, 64), (500, 64)]:
        w = frontier._order_weights(N, n)
        assert w.sum() == pytest.approx(1.0) and (w[: n - 1] == 0).all()


def test_best_of_n_gold_by_proxy_keeps_prompts_aligned_when_one_has_no_samples():
    gold = [[], [1.0, 2.0], [5.0, 3.0]]
    proxy = [[], [2.0, 1.0], [0.0, 1.0]]  # the proxy picks the worse gold in both prompts
    curve = frontier.best_of_n_gold(gold, ns=[2], by_per_prompt=proxy)
    assert curve == [{"n": 2, "kl": pytest.approx(math.log(2) - 0.5), "gold": 2.0, "n_prompts": 2}]
