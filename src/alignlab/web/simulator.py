"""The simulator's maths: the KL-regularised optimum, estimated on samples from π_ref. Pure Python.

The policy that maximises ``E_π[r] − β·KL(π‖π_ref)`` is (Ziebart 2010; Rafailov et al. 2023, eq. 4)::

    π*(y) = π_ref(y) · exp(r(y)/β) / Z(β),        Z(β) = E_{π_ref}[exp(r/β)]

Given N responses y_1..y_N sampled i.i.d. from π_ref, self-normalised importance sampling puts
weight ``w_i = exp(r_i/β) / Σ_j exp(r_j/β)`` on each sample, which estimates π* on the samples:

    E_{π*}[r]        ≈ Σ_i w_i r_i
    KL(π*‖π_ref)     ≈ Σ_i w_i log(N w_i)         (π*(y_i)/π_ref(y_i) ≈ N w_i)
    effective sample size  ESS = 1 / Σ_i w_i²      (N when β → ∞, 1 when β → 0)

When the samples hold each distinct response in proportion to its π_ref probability, these are
exact (the unit test checks that against the closed form). The estimate can never show a KL
above log N: with few samples a small β saturates there, which the ESS makes visible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """The reweighted policy at one β."""

    beta: float
    expected_reward: float
    """E_{π*}[r], the reward's mean under the weights."""
    kl: float
    """KL(π*‖π_ref) in nats, estimated as Σ w_i log(N w_i)."""
    ess: float
    """Effective sample size 1/Σ w_i², between 1 and N."""


def weights(rewards: Sequence[float], beta: float) -> list[float]:
    """Self-normalised importance weights ``w_i ∝ exp(r_i/β)`` (a stable softmax of r/β).

    ``beta`` must be positive; ``beta = inf`` gives uniform weights (π* = π_ref).
    """
    if not rewards:
        raise ValueError("weights: no rewards given")
    if not beta > 0:
        raise ValueError(f"weights: beta must be positive, got {beta}")
    if math.isinf(beta):
        return [1.0 / len(rewards)] * len(rewards)
    logits = [float(r) / beta for r in rewards]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def point(rewards: Sequence[float], beta: float) -> Point:
    """E_w[r], the KL estimate and the ESS at ``beta``."""
    w = weights(rewards, beta)
    n = len(w)
    expected = sum(wi * float(r) for wi, r in zip(w, rewards))
    kl = sum(wi * math.log(n * wi) for wi in w if wi > 0)
    ess = 1.0 / sum(wi * wi for wi in w)
    return Point(beta=float(beta), expected_reward=expected, kl=max(kl, 0.0), ess=ess)


def beta_grid(lo: float = 0.01, hi: float = 100.0, n: int = 41) -> list[float]:
    """``n`` values of β spaced evenly on a log scale from ``lo`` to ``hi``."""
    if n < 2:
        return [lo]
    a, b = math.log(lo), math.log(hi)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


def curve(rewards: Sequence[float], betas: Sequence[float]) -> list[Point]:
    """The reward-vs-KL frontier traced by β (each point the optimum of its β on these samples)."""
    return [point(rewards, b) for b in betas]


def combine(components: dict[str, Sequence[float]], mix: dict[str, float]) -> list[float]:
    """A weighted reward ``r_i = Σ_k mix[k] · components[k][i]`` (a weighted gold function).

    Components absent from ``mix`` get weight 0; a name in ``mix`` that is not a component is an error.
    """
    unknown = sorted(set(mix) - set(components))
    if unknown:
        raise KeyError(f"unknown reward component(s): {', '.join(unknown)}")
    if not components:
        raise ValueError("combine: no reward components")
    n = len(next(iter(components.values())))
    out = [0.0] * n
    for name, scores in components.items():
        w = float(mix.get(name, 0.0))
        if w:
            for i, s in enumerate(scores):
                out[i] += w * float(s)
    return out


def draw(w: Sequence[float], seed: int) -> int:
    """Index of one response drawn from the weights (seeded: the same seed draws the same quantile)."""
    u = random.Random(seed).random()
    acc = 0.0
    for i, wi in enumerate(w):
        acc += wi
        if u < acc:
            return i
    return len(w) - 1
