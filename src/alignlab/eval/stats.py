"""Interval estimates for evaluation numbers: win rates (with ties), means, paired differences.

Everything is numpy and deterministic: a bootstrap takes a ``seed`` and draws from
``numpy.random.default_rng(seed)``, so the same inputs give the same interval.

* :func:`wilson_interval` — the Wilson score interval (Wilson 1927) for a proportion p̂ = k/n::

      centre = (p̂ + z²/2n) / (1 + z²/n)
      half   = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²)

  It stays inside [0, 1] and keeps its coverage near p̂ = 0 or 1, where the normal (Wald)
  interval collapses to a point. With ties counted ½, k may be fractional; the formula is used
  as is (a tie contributes half a success).
* :func:`bootstrap_interval` — the percentile bootstrap: resample the per-item values with
  replacement ``n_boot`` times, take the statistic of each resample, report its α/2 and 1 − α/2
  quantiles.
* :func:`mean_interval` — mean ± t_{1−α/2, n−1} · s/√n (Student t), and the bootstrap interval.
* :func:`paired_difference` — the same on per-item differences a_i − b_i (items matched, e.g. the
  same prompt answered by two policies), so prompt difficulty cancels. ``significant`` is True
  when the whole t interval lies above 0 ("the gain exceeds its 95% CI").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np

# Outcome of one comparison, from the first system's side.
WIN, TIE, LOSS = 1.0, 0.5, 0.0

# A bootstrap draws at most this many indices at once (2**22 int64 = 32 MiB).
_BOOT_CHUNK_ELEMENTS = 2**22


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _as_values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: every value must be finite (got NaN or inf)")
    return x


# ----------------------------------------------------------------------------- quantiles
def z_quantile(p: float) -> float:
    """The standard normal quantile Φ⁻¹(p) (1.95996… for p = 0.975)."""
    return NormalDist().inv_cdf(p)


def _t_cdf(x: float, df: float) -> float:
    """P(T ≤ x) for Student's t with ``df`` degrees of freedom, by Simpson's rule on the density.

    f(t) = Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + t²/ν)^(−(ν+1)/2); the density is smooth and
    symmetric, so CDF(x) = ½ + sign(x) ∫₀^|x| f. 4000 panels give ~1e-12 accuracy for |x| ≤ 100.
    """
    if x == 0.0:
        return 0.5
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    grid = np.linspace(0.0, abs(x), 4001)
    dens = np.exp(log_c - (df + 1) / 2 * np.log1p(grid**2 / df))
    h = grid[1] - grid[0]
    area = h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    return 0.5 + math.copysign(area, x)


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Student t quantile t_p(ν) by bisection on the CDF (12.706 for p = 0.975, ν = 1).

    No scipy: alignlab does not depend on it. For ν > 1000 the normal quantile is used (the two
    differ by < 0.001 at p = 0.975).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df!r}")
    if df > 1000:
        return z_quantile(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------- intervals
def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (a tie counts ½ a success)."""
    confidence = _check_confidence(confidence)
    if n <= 0:
        return (0.0, 1.0)
    if not 0.0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes!r}")
    z = z_quantile(0.5 + confidence / 2)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over ``values``.

    ``statistic`` maps a ``(n_boot, n)`` array of resamples to ``(n_boot,)``; the default is the
    per-row mean. One value gives a zero-width interval at that value; none gives (nan, nan).
    """
    confidence = _check_confidence(confidence)
    x = _as_values(values, "bootstrap_interval")
    if x.size == 0:
        return (math.nan, math.nan)
    stat = statistic or (lambda a: a.mean(axis=1))
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // x.size)  # resamples per draw: memory stays bounded for large n
    parts = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, x.size, size=(min(chunk, n_boot - start), x.size))  # (chunk, n)
        parts.append(np.asarray(stat(x[idx]), dtype=np.float64).reshape(-1))  # (chunk,)
    boot = np.concatenate(parts)  # (n_boot,)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def mean_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Mean of ``values`` with its t interval and its bootstrap interval.

    Returns ``{mean, std, se, n, t_interval: [lo, hi], bootstrap_interval: [lo, hi]}``; ``std`` is
    the sample standard deviation (ddof 1) and ``se = std/√n``. With n < 2 the intervals are
    ``[mean, mean]`` for n = 1 (no spread to measure) and ``null`` entries for n = 0.
    """
    x = _as_values(values, "mean_interval")
    n = int(x.size)
    if n == 0:
        return {"mean": None, "std": None, "se": None, "n": 0, "t_interval": None, "bootstrap_interval": None}
    mean = float(x.mean())
    if n == 1:
        return {
            "mean": mean,
            "std": 0.0,
            "se": 0.0,
            "n": 1,
            "t_interval": [mean, mean],
            "bootstrap_interval": [mean, mean],
        }
    std = float(x.std(ddof=1))
    se = std / math.sqrt(n)
    t = t_quantile(0.5 + _check_confidence(confidence) / 2, n - 1)
    boot = bootstrap_interval(x, confidence=confidence, n_boot=n_boot, seed=seed)
    return {
        "mean": mean,
        "std": std,
        "se": se,
        "n": n,
        "t_interval": [mean - t * se, mean + t * se],
        "bootstrap_interval": list(boot),
    }


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Mean of a_i − b_i over matched items with t and bootstrap intervals.

    Returns :func:`mean_interval`'s dict plus ``significant``: True when the t interval's lower end
    is above 0 (a is better than b beyond the interval).
    """
    xa, xb = _as_values(a, "paired_difference a"), _as_values(b, "paired_difference b")
    if xa.shape != xb.shape:
        raise ValueError(f"paired_difference: a and b must be matched, got {xa.size} and {xb.size} items")
    out = mean_interval(xa - xb, confidence=confidence, n_boot=n_boot, seed=seed)
    out["significant"] = bool(out["n"] >= 2 and out["t_interval"][0] > 0.0)
    return out


# ----------------------------------------------------------------------------- win rates
def compare(a: Sequence[float], b: Sequence[float], *, tie_tol: float = 0.0) -> np.ndarray:
    """Per-item outcomes of a against b: 1 (a > b + tol), ½ (|a − b| ≤ tol), 0 (a < b − tol)."""
    xa, xb = _as_values(a, "compare a"), _as_values(b, "compare b")
    if xa.shape != xb.shape:
        raise ValueError(f"compare: a and b must be matched, got {xa.size} and {xb.size} items")
    diff = xa - xb
    return np.where(diff > tie_tol, WIN, np.where(diff < -tie_tol, LOSS, TIE))


def win_rate(
    outcomes: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Win rate from per-item outcomes in [0, 1] (1 win, ½ tie, 0 loss; fractions allowed).

    An item may be a prompt whose outcome is already a mean over several comparisons, so values
    strictly between 0 and 1 other than ½ are allowed; ``wins``/``ties``/``losses`` count the items
    equal to 1, ½ and 0 (a fractional item is in none of them, so they may sum below ``n``).

    Returns ``{win_rate, wins, ties, losses, n, tie_rate, wilson: [lo, hi], bootstrap: [lo, hi]}``
    with ``win_rate = mean(outcomes)`` (ties count ½).
    """
    x = _as_values(outcomes, "win_rate")
    if np.any((x < 0) | (x > 1)):
        raise ValueError("win_rate: outcomes must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    n = int(x.size)
    if n == 0:
        return {
            "win_rate": None,
            "wins": 0,
            "ties": 0,
            "losses": 0,
            "n": 0,
            "tie_rate": None,
            "wilson": None,
            "bootstrap": None,
        }
    ties = int(np.sum(x == TIE))
    return {
        "win_rate": float(x.mean()),
        "wins": int(np.sum(x == WIN)),
        "ties": ties,
        "losses": int(np.sum(x == LOSS)),
        "n": n,
        "tie_rate": ties / n,
        "wilson": list(wilson_interval(float(x.sum()), n, confidence)),
        "bootstrap": list(bootstrap_interval(x, confidence=confidence, n_boot=n_boot, seed=seed)),
    }
