"""Sampled KL(π‖π_ref) of a policy, from the per-token log-probs of responses sampled from π.

For a response y ~ π with per-token log ratio ℓ_t = log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)
the per-response estimates (summed over the response's tokens, so in nats per response) are::

    k1(y) = Σ_t ℓ_t                          unbiased for KL(π(·|x) ‖ π_ref(·|x)); can be negative
    k3(y) = Σ_t (exp(−ℓ_t) − 1 + ℓ_t)        unbiased, ≥ 0, lower variance

(Schulman 2020, "Approximating KL divergence"; the same estimators as :mod:`alignlab.losses.kl`,
written in numpy here so evaluation needs no torch.) k3 per token is unbiased for the per-token KL
given the prefix, so its sum is unbiased for the sequence KL. The policy's KL is the mean over
responses (a per-sequence mean), reported with its standard error s/√n.

Inputs are ragged: one list of per-token values per response (rows of ``rollouts/*.jsonl`` and
scored sample rows carry ``logprobs`` / ``ref_logprobs`` that way). A padded ``(B, T)`` array or
tensor is accepted with a ``mask`` (1 on response tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# Same clamp as alignlab.losses.kl.K3_LOG_RATIO_CLAMP: exp(±20) stays finite.
K3_LOG_RATIO_CLAMP = 20.0


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed to read it
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _rows(values: Any, mask: Any | None) -> list[np.ndarray]:
    """Ragged per-response arrays from a list of lists, or from a padded (B, T) array with a mask."""
    if mask is not None:
        v, m = _to_numpy(values), _to_numpy(mask)
        if v.shape != m.shape or v.ndim != 2:
            raise ValueError(f"values {v.shape} and mask {m.shape} must both be (B, T)")
        return [row[mrow > 0] for row, mrow in zip(v, m)]
    if hasattr(values, "detach") or (isinstance(values, np.ndarray) and values.ndim == 2):
        return list(_to_numpy(values))
    return [_to_numpy(r).reshape(-1) for r in values]


def response_kl(
    logprobs: Sequence[Sequence[float]] | Any,
    ref_logprobs: Sequence[Sequence[float]] | Any,
    mask: Any | None = None,
) -> dict[str, np.ndarray]:
    """Per-response k1 and k3, each ``(B,)``, summed over each response's tokens."""
    lp, ref = _rows(logprobs, mask), _rows(ref_logprobs, mask)
    if len(lp) != len(ref):
        raise ValueError(f"logprobs has {len(lp)} responses but ref_logprobs has {len(ref)}")
    k1, k3 = [], []
    for i, (a, b) in enumerate(zip(lp, ref)):
        if a.shape != b.shape:
            raise ValueError(f"response {i}: {a.size} logprobs but {b.size} ref_logprobs")
        ratio = a - b  # (T_i,)
        clamped = np.clip(ratio, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        k1.append(float(ratio.sum()))
        k3.append(float(np.clip(np.expm1(-clamped) + clamped, 0.0, None).sum()))
    return {"k1": np.asarray(k1), "k3": np.asarray(k3)}


def _mean_se(x: np.ndarray) -> dict:
    n = int(x.size)
    if n == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": float(x.mean()), "se": se, "n": n}


def kl_summary(
    logprobs: Sequence[Sequence[float]] | Any,
    ref_logprobs: Sequence[Sequence[float]] | Any,
    mask: Any | None = None,
) -> dict[str, dict]:
    """``{"k1": {mean, se, n}, "k3": {mean, se, n}}``: the per-sequence mean of each estimate and
    its standard error (ddof 1), in nats per response."""
    per = response_kl(logprobs, ref_logprobs, mask)
    return {name: _mean_se(vals) for name, vals in per.items()}


def rows_kl(rows: Sequence[dict]) -> dict[str, dict] | None:
    """:func:`kl_summary` over sample rows that carry ``logprobs`` and ``ref_logprobs``; None if
    no row does (rows without both are skipped)."""
    usable = [r for r in rows if r.get("logprobs") is not None and r.get("ref_logprobs") is not None]
    if not usable:
        return None
    return kl_summary([r["logprobs"] for r in usable], [r["ref_logprobs"] for r in usable])


def rollout_kl(stage_path) -> list[dict]:
    """KL per recorded rollout of an RL stage: ``[{step, k1: {mean, se, n}, k3: {...}, score}]``.

    Reads ``<stage>/rollouts/step-*.jsonl`` through :class:`alignlab.runs.StageFolder`; the rows'
    ``logprobs`` are those of the policy that sampled them (π_old), so this is the KL of the
    policy at each rollout. ``score`` is the mean proxy score of the rollout (None if absent).
    Steps whose rows lack log-probs are left out.
    """
    from pathlib import Path

    from alignlab import runs

    folder = runs.StageFolder(Path(stage_path))
    out = []
    for step in folder.rollout_steps():
        rows = folder.read_rollout(step)
        kl = rows_kl(rows)
        if kl is None:
            continue
        scores = [float(r["score"]) for r in rows if isinstance(r.get("score"), (int, float))]
        out.append({"step": step, **kl, "score": float(np.mean(scores)) if scores else None})
    return out
