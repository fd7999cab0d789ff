"""The KL–gold frontier: where each policy sits in (KL to π_ref, gold reward), against best-of-n.

Best-of-n (sample n responses from the base policy, keep the one the reward prefers) is the
training-free baseline every RL result is compared with (Stiennon et al. 2020; Gao et al. 2022):

* its KL to the base policy is analytic, ``KL_bon(n) = log n − (n − 1)/n`` nats
  (:func:`alignlab.losses.advantages.best_of_n_kl`; an upper bound, exact when the n samples are
  almost surely distinct, Beirami et al. 2024);
* its gold reward is estimated from N ≥ n scored samples per prompt without drawing subsets: with
  the prompt's N scores sorted ascending, x_(1) ≤ … ≤ x_(N), the max of a uniformly random
  n-subset is x_(i) with probability C(i − 1, n − 1) / C(N, n), so

      E[max of n] = Σ_{i=n..N} C(i − 1, n − 1) / C(N, n) · x_(i)

  is the unbiased estimator (the mean over all C(N, n) subsets), computed exactly.

Here the selecting score and the gold score are the same (best-of-n on gold: the oracle frontier).
To pick by a proxy and report gold, see :func:`expected_max_of_n` with ``by``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np

from alignlab.eval.kl import rows_kl
from alignlab.eval.stats import mean_interval

DEFAULT_NS = tuple(range(1, 65))


def bon_kl(n: int) -> float:
    """KL(π_bon(n) ‖ π_base) = log n − (n − 1)/n, the one formula in :mod:`alignlab.losses.advantages`."""
    from alignlab.losses.advantages import best_of_n_kl  # torch there; imported only when called

    return best_of_n_kl(n)


def best_of_n_kl_curve(ns: Iterable[int] = DEFAULT_NS) -> list[dict]:
    """``[{n, kl}]`` for each n (default 1…64): the analytic best-of-n KL in nats."""
    return [{"n": int(n), "kl": bon_kl(int(n))} for n in ns]


@functools.lru_cache(maxsize=1024)
def _order_weights(N: int, n: int) -> np.ndarray:
    """``(N,)`` weights w_i = C(i − 1, n − 1) / C(N, n) for the ascending order statistics (0 for i < n).

    Exact integer binomials, one correctly rounded division each; cached per (N, n) and read-only.
    """
    total = math.comb(N, n)
    w = np.array([math.comb(i - 1, n - 1) / total if i >= n else 0.0 for i in range(1, N + 1)])
    w.flags.writeable = False
    return w


def expected_max_of_n(scores: Sequence[float], n: int, *, by: Sequence[float] | None = None) -> float:
    """Unbiased estimate, from N ≥ n samples of one prompt, of the expected score of best-of-n.

    ``by`` (optional, same length) is the score used to *select* (a proxy reward); ``scores`` is
    what is reported (gold). Without ``by`` the selection is on ``scores`` itself, giving
    E[max of n]. Ties in ``by`` are broken by position (a stable sort: of two equal ``by`` values
    the later sample ranks higher); the samples' order is random, so this is a random tie-break.
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    N = int(x.size)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs at least {n} samples of the prompt, got {N}")
    key = x if by is None else np.asarray(by, dtype=np.float64).reshape(-1)
    if key.shape != x.shape:
        raise ValueError(f"by has {key.size} values but scores has {N}")
    order = np.argsort(key, kind="stable")
    return float(_order_weights(N, n) @ x[order])


def best_of_n_gold(
    scores_per_prompt: Sequence[Sequence[float]],
    ns: Iterable[int] = DEFAULT_NS,
    *,
    by_per_prompt: Sequence[Sequence[float]] | None = None,
) -> list[dict]:
    """The empirical best-of-n curve: ``[{n, kl, gold, n_prompts}]``.

    ``gold`` is the mean over prompts of :func:`expected_max_of_n`; an n larger than the smallest
    number of samples any prompt has is left out (so every point averages the same prompts).
    """
    if by_per_prompt is not None and len(by_per_prompt) != len(scores_per_prompt):
        raise ValueError(
            f"by_per_prompt has {len(by_per_prompt)} prompts but scores_per_prompt has {len(scores_per_prompt)}"
        )
    by_all = by_per_prompt if by_per_prompt is not None else [None] * len(scores_per_prompt)
    groups = [(list(s), b) for s, b in zip(scores_per_prompt, by_all) if len(s) > 0]  # prompts without samples dropped
    if not groups:
        return []
    n_max = min(len(g) for g, _ in groups)
    out = []
    for n in ns:
        n = int(n)
        if n > n_max:
            continue
        vals = [expected_max_of_n(g, n, by=b) for g, b in groups]
        out.append({"n": n, "kl": bon_kl(n), "gold": float(np.mean(vals)), "n_prompts": len(groups)})
    return out


def checkpoint_points(
    rows_by_checkpoint: dict[str, Sequence[dict]],
    *,
    estimator: str = "k3",
    gold_key: str = "gold",
    confidence: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """One frontier point per checkpoint (or policy): ``[{name, kl, kl_se, gold, gold_interval, n}]``.

    ``kl`` is the per-sequence mean of the ``estimator`` (``k1`` or ``k3``, see
    :mod:`alignlab.eval.kl`) over rows carrying ``logprobs`` and ``ref_logprobs``; None where none
    does. ``gold`` is the mean of the rows' ``gold_key`` with its t interval.
    """
    if estimator not in ("k1", "k3"):
        raise ValueError(f"estimator must be 'k1' or 'k3', got {estimator!r}")
    points = []
    for name, rows in rows_by_checkpoint.items():
        gold = [float(r[gold_key]) for r in rows if r.get(gold_key) is not None]
        kl = rows_kl(rows)
        stats = mean_interval(gold, confidence=confidence, seed=seed)
        points.append(
            {
                "name": name,
                "kl": None if kl is None else kl[estimator]["mean"],
                "kl_se": None if kl is None else kl[estimator]["se"],
                "gold": stats["mean"],
                "gold_interval": stats["t_interval"],
                "n": len(gold),
            }
        )
    return points
