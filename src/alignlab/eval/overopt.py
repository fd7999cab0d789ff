"""Reward over-optimisation curves: the functional forms of Gao, Schulman & Hilton 2022
("Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760, §3).

With d = √KL(π‖π_init) (KL in nats) and R the gold reward *gain* over the initial policy
(so R(0) = 0)::

    best-of-n:  R_bon(d) = d (α_bon − β_bon · d)
    RL:         R_RL(d)  = d (α_RL − β_RL · log d)

Both are linear in (α, β), so each fit is ordinary least squares without intercept, in closed
form: R = X @ [α, β] with X = [d, −d²] (best-of-n) or X = [d, −d·log d] (RL; d·log d → 0 at
d = 0). The fit's R² = 1 − SS_res / SS_tot, SS_tot about the mean of R (it can be negative when
the form fits worse than a constant). α is the initial slope; β how fast gold turns over, with the
peak at d* = α / 2β (best-of-n) or d* = exp(α/β − 1) (RL).

A form is data: :data:`OVEROPT_FORMS` maps the name to its design columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def _bon_design(d: np.ndarray) -> np.ndarray:
    return np.stack([d, -(d**2)], axis=1)  # (P, 2)


def _rl_design(d: np.ndarray) -> np.ndarray:
    safe = np.where(d > 0, d, 1.0)
    return np.stack([d, -np.where(d > 0, d * np.log(safe), 0.0)], axis=1)  # (P, 2)


OVEROPT_FORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bon": _bon_design,
    "rl": _rl_design,
}


def predict(form: str, kl: Sequence[float] | np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """R(d) of ``form`` at KL values ``kl`` (d = √KL)."""
    d = np.sqrt(np.clip(np.asarray(kl, dtype=np.float64), 0.0, None))
    return OVEROPT_FORMS[form](d) @ np.array([alpha, beta])


def fit(form: str, kl: Sequence[float], gain: Sequence[float]) -> dict | None:
    """Least-squares fit of ``form`` (``bon`` or ``rl``) to points (KL, gold gain).

    Returns ``{form, alpha, beta, r2, n, peak_kl}`` or None when fewer than two points have
    KL > 0 (two parameters need two informative points). Negative KL estimates (k1 noise) are
    clipped to 0. ``peak_kl`` is the KL at the fitted maximum, None if the fit has no maximum
    (β ≤ 0 for best-of-n).
    """
    if form not in OVEROPT_FORMS:
        raise ValueError(f"unknown over-optimisation form {form!r} (valid: {', '.join(OVEROPT_FORMS)})")
    k = np.clip(np.asarray(kl, dtype=np.float64).reshape(-1), 0.0, None)
    r = np.asarray(gain, dtype=np.float64).reshape(-1)
    if k.shape != r.shape:
        raise ValueError(f"fit: {k.size} KL values but {r.size} gains")
    keep = np.isfinite(k) & np.isfinite(r)
    k, r = k[keep], r[keep]
    if int(np.sum(k > 0)) < 2:
        return None
    X = OVEROPT_FORMS[form](np.sqrt(k))  # (P, 2)
    coef, *_ = np.linalg.lstsq(X, r, rcond=None)
    alpha, beta = float(coef[0]), float(coef[1])
    resid = r - X @ coef
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else (1.0 if float(resid @ resid) == 0 else 0.0)
    return {
        "form": form,
        "alpha": alpha,
        "beta": beta,
        "r2": r2,
        "n": int(k.size),
        "peak_kl": _peak_kl(form, alpha, beta),
    }


def _peak_kl(form: str, alpha: float, beta: float) -> float | None:
    if beta <= 0:
        return None
    if form == "bon":
        d_star = alpha / (2 * beta)  # dR/dd = α − 2βd = 0
    else:
        d_star = math.exp(min(alpha / beta - 1.0, 50.0))  # dR/dd = α − β(log d + 1) = 0
    return d_star**2 if d_star > 0 else None


def fit_bon(kl: Sequence[float], gain: Sequence[float]) -> dict | None:
    """:func:`fit` with the best-of-n form R = d(α − βd)."""
    return fit("bon", kl, gain)


def fit_rl(kl: Sequence[float], gain: Sequence[float]) -> dict | None:
    """:func:`fit` with the RL form R = d(α − β log d)."""
    return fit("rl", kl, gain)
