"""The simulator's reweighting against the closed form of π* ∝ π_ref·exp(r/β)."""

from __future__ import annotations

import itertools
import math

import pytest

from alignlab.web import simulator as sim

# Three distinct responses with known π_ref probabilities and rewards.
P_REF = [0.5, 0.3, 0.2]
R = [0.0, 1.0, 2.0]


def closed_form(beta: float) -> tuple[float, float]:
    """E_{π*}[r] and KL(π*‖π_ref) computed by hand from π*(k) = π_ref(k)·e^{r_k/β} / Z."""
    unnorm = [p * math.exp(r / beta) for p, r in zip(P_REF, R)]
    z = sum(unnorm)
    star = [u / z for u in unnorm]
    expected = sum(s * r for s, r in zip(star, R))
    kl = sum(s * math.log(s / p) for s, p in zip(star, P_REF))
    return expected, kl


def samples_in_proportion(n: int = 1000) -> list[float]:
    """The rewards of n samples holding each response exactly in proportion to π_ref."""
    out: list[float] = []
    for p, r in zip(P_REF, R):
        out += [r] * round(p * n)
    assert len(out) == n
    return out


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 3.0, 20.0])
def test_reweighting_matches_closed_form(beta):
    expected, kl = closed_form(beta)
    p = sim.point(samples_in_proportion(), beta)
    assert p.expected_reward == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert p.kl == pytest.approx(kl, rel=1e-9, abs=1e-12)


def test_hand_values_at_beta_one():
    # Z = 0.5 + 0.3e + 0.2e² ; E[r] = (0.3e + 0.4e²)/Z, computed without the helper above.
    e = math.e
    z = 0.5 + 0.3 * e + 0.2 * e * e
    p = sim.point(samples_in_proportion(), 1.0)
    assert p.expected_reward == pytest.approx((0.3 * e + 0.4 * e * e) / z, rel=1e-9)
    # KL = E*[r]/β − log Z (the optimum's identity) at β = 1.
    assert p.kl == pytest.approx(p.expected_reward - math.log(z), rel=1e-9)


def test_limits_and_monotonicity():
    rewards = samples_in_proportion(100)
    big = sim.point(rewards, 1e6)
    assert big.kl == pytest.approx(0.0, abs=1e-6)
    assert big.ess == pytest.approx(100.0, rel=1e-4)
    assert big.expected_reward == pytest.approx(sum(rewards) / 100, rel=1e-4)
    small = sim.point(rewards, 1e-3)  # all weight on the 20 samples with r = 2
    assert small.expected_reward == pytest.approx(2.0)
    assert small.kl == pytest.approx(math.log(100 / 20))
    assert small.ess == pytest.approx(20.0)
    points = sim.curve(rewards, sim.beta_grid(0.05, 50.0, 30))
    kls = [q.kl for q in points]
    rs = [q.expected_reward for q in points]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(kls)), "KL must fall as β grows"
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(rs)), "E[r] must fall as β grows"


def test_uniform_at_infinite_beta_and_errors():
    assert sim.weights([1.0, 5.0], math.inf) == [0.5, 0.5]
    with pytest.raises(ValueError):
        sim.weights([1.0], 0.0)
    with pytest.raises(ValueError):
        sim.weights([], 1.0)


def test_combine_is_a_weighted_sum():
    comps = {"a": [1.0, 0.0], "b": [0.0, 2.0]}
    assert sim.combine(comps, {"a": 0.5, "b": 2.0}) == [0.5, 4.0]
    assert sim.combine(comps, {"a": 1.0}) == [1.0, 0.0]
    with pytest.raises(KeyError):
        sim.combine(comps, {"c": 1.0})


def test_draw_follows_the_weights():
    w = [0.0, 1.0, 0.0]
    assert all(sim.draw(w, s) == 1 for s in range(20))
    counts = [0, 0]
    for s in range(4000):
        counts[sim.draw([0.25, 0.75], s)] += 1
    assert counts[1] / 4000 == pytest.approx(0.75, abs=0.03)


def test_stable_for_large_rewards():
    p = sim.point([1000.0, 0.0], 0.01)
    assert p.expected_reward == pytest.approx(1000.0)
    assert math.isfinite(p.kl)
