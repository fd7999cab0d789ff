"""Reward-hacking and collapse monitors: cheap checks over sampled responses and metric rows.

Every monitor returns the same dict, so the report and the web app show them one way::

    {"name": str, "value": float | None, "threshold": float, "fired": bool, "message": str}

``value`` is what was measured, ``threshold`` the line it is compared with, ``fired`` whether
it crossed it; ``message`` says in words what was seen. A monitor whose input is missing returns
None (nothing to say), not a quiet result. The thresholds are defaults for small runs; every
function takes its own.

Text statistics work on whitespace words (lower-cased): no tokenizer is needed, and a policy that
repeats one token repeats one word too.

================  ==========================================  =====================================
monitor           value                                        fires when
================  ==========================================  =====================================
length_drift      mean length / baseline mean length           ratio > threshold or < 1/threshold
repetition        mean repeated n-gram rate within a response  value > threshold
diversity         mean pairwise Jaccard similarity of n-grams  value > threshold (mode collapse)
entropy_collapse  late mean entropy / early mean entropy       value < threshold
proxy_gold_gap    share of the gold gain given back            value > threshold and proxy still rose
disagreement      late / early mean of ``rm/disagreement``     value > threshold
================  ==========================================  =====================================
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


def result(name: str, value: float | None, threshold: float, fired: bool, message: str) -> dict:
    """The one shape every monitor returns."""
    return {
        "name": name,
        "value": None if value is None else float(value),
        "threshold": float(threshold),
        "fired": bool(fired),
        "message": message,
    }


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ----------------------------------------------------------------------------- per response
def distinct_n(text: str, n: int) -> float | None:
    """Distinct-n: unique n-grams / n-grams in one response (Li et al. 2016); None if it has none."""
    grams = ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else None


def repeated_ngram_rate(text: str, n: int = 3) -> float | None:
    """Share of a response's n-grams that repeat an n-gram seen earlier in it; None if it has none."""
    grams = ngrams(words(text), n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def response_length(text: str) -> int:
    return len(words(text))


# ----------------------------------------------------------------------------- monitors over samples
def length_drift(
    responses: Sequence[str],
    baseline: Sequence[str],
    *,
    threshold: float = 2.0,
    lengths: Sequence[float] | None = None,
    baseline_lengths: Sequence[float] | None = None,
) -> dict | None:
    """Mean response length relative to a baseline policy's (e.g. SFT) on the same prompts.

    Length is a known reward hack (RMs like long answers; Singhal et al. 2023); a collapse to
    very short answers is a failure too, so the monitor fires on a ratio above ``threshold`` or
    below ``1/threshold``. ``lengths`` (token counts) replace word counts when given.
    """
    a = [float(x) for x in lengths] if lengths is not None else [response_length(r) for r in responses]
    b = [float(x) for x in baseline_lengths] if baseline_lengths is not None else [response_length(r) for r in baseline]
    if not a or not b or np.mean(b) == 0:
        return None
    ratio = float(np.mean(a) / np.mean(b))
    fired = ratio > threshold or ratio < 1.0 / threshold
    msg = f"mean length {np.mean(a):.1f} vs baseline {np.mean(b):.1f} ({ratio:.2f}x)"
    if fired:
        msg += ": " + ("responses grew far longer than the baseline's" if ratio > 1 else "responses shrank")
    return result("length_drift", ratio, threshold, fired, msg)


def repetition(responses: Sequence[str], *, n: int = 3, threshold: float = 0.3) -> dict | None:
    """Mean repeated-n-gram rate within responses (degenerate loops: "the the the ...").

    The message also gives mean distinct-1 and distinct-2 over the responses.
    """
    rates = [r for r in (repeated_ngram_rate(t, n) for t in responses) if r is not None]
    if not rates:
        return None
    value = float(np.mean(rates))
    d1 = [d for d in (distinct_n(t, 1) for t in responses) if d is not None]
    d2 = [d for d in (distinct_n(t, 2) for t in responses) if d is not None]
    fired = value > threshold
    msg = (
        f"repeated {n}-gram rate {value:.2f}; distinct-1 {np.mean(d1):.2f}, "
        f"distinct-2 {np.mean(d2) if d2 else float('nan'):.2f}"
    )
    if fired:
        msg += ": responses repeat themselves"
    return result("repetition", value, threshold, fired, msg)


def _jaccard(a: set, b: set) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def pairwise_similarity(texts: Sequence[str], *, n: int = 2, max_pairs: int = 5000) -> float | None:
    """Mean Jaccard similarity of the word 1..n-gram sets over pairs of texts; None for < 2 texts.

    Above ``max_pairs`` pairs, ``max_pairs`` random pairs (seed 0) are used.
    """
    if len(texts) < 2:
        return None
    sets = []
    for t in texts:
        w = words(t)
        sets.append({g for k in range(1, n + 1) for g in ngrams(w, k)})
    m = len(sets)
    if m * (m - 1) // 2 <= max_pairs:
        pairs = itertools.combinations(range(m), 2)
    else:  # draw pairs i ≠ j (with replacement) instead of listing all m²/2 of them
        rng = np.random.default_rng(0)
        i = rng.integers(0, m, size=max_pairs)
        j = (i + rng.integers(1, m, size=max_pairs)) % m
        pairs = zip(i.tolist(), j.tolist())
    return float(np.mean([_jaccard(sets[a], sets[b]) for a, b in pairs]))


def diversity(groups: Sequence[Sequence[str]] | dict, *, threshold: float = 0.8) -> dict | None:
    """Mode collapse: mean pairwise similarity of responses to the same prompt.

    ``groups`` is a list of response lists (or a dict prompt → responses), one per prompt; groups
    with fewer than two responses are skipped. With one response per prompt, pass all responses as
    one group: answering every prompt with the same text is a collapse too.
    """
    values = groups.values() if isinstance(groups, dict) else groups
    sims = [s for s in (pairwise_similarity(list(g)) for g in values) if s is not None]
    if not sims:
        return None
    value = float(np.mean(sims))
    fired = value > threshold
    msg = f"mean pairwise similarity {value:.2f} over {len(sims)} group(s)"
    if fired:
        msg += ": responses are near copies of each other (mode collapse)"
    return result("diversity", value, threshold, fired, msg)


# ----------------------------------------------------------------------------- monitors over metric rows
def _series(rows: Sequence[dict], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _early_late(values: Sequence[float], frac: float = 0.2) -> tuple[float, float]:
    k = max(1, int(len(values) * frac))
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


def entropy_collapse(rows: Sequence[dict], *, key: str = "entropy", threshold: float = 0.25) -> dict | None:
    """Policy entropy late in training (last 20% of rows) over early (first 20%)."""
    ent = _series(rows, key)
    if len(ent) < 2:
        return None
    return entropy_change(*_early_late(ent), threshold=threshold)


def entropy_change(early: float, late: float, *, threshold: float = 0.25) -> dict | None:
    """Entropy ``late`` over entropy ``early`` (the collapse test of :func:`entropy_collapse`;
    training uses it on each rollout against its first rollouts); None when ``early`` is not > 0."""
    if early <= 0:
        return None
    value = late / early
    fired = value < threshold
    msg = f"entropy {early:.3f} → {late:.3f} ({value:.2f}x)"
    if fired:
        msg += ": the policy has become nearly deterministic (entropy collapse)"
    return result("entropy_collapse", value, threshold, fired, msg)


def _smooth(x: np.ndarray) -> np.ndarray:
    w = max(1, len(x) // 10)
    if w == 1:
        return x
    kernel = np.ones(w) / w
    padded = np.concatenate([np.full(w - 1, x[0]), x])
    return np.convolve(padded, kernel, mode="valid")  # (len(x),): trailing moving average


def proxy_gold_gap(proxy: Sequence[float], gold: Sequence[float], *, threshold: float = 0.3) -> dict | None:
    """Over-optimisation in a training trace: the proxy keeps rising while gold falls.

    ``proxy`` and ``gold`` are matched series in step order (e.g. per logged step or per
    checkpoint), smoothed by a trailing moving average over a tenth of the points. ``value`` is
    the share of gold's range given back since its peak, (gold_peak − gold_last) / (gold_max −
    gold_min); it fires when that exceeds ``threshold`` while the proxy ended above its value at
    gold's peak.
    """
    p, g = np.asarray(proxy, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"proxy has {p.size} points but gold has {g.size}")
    keep = np.isfinite(p) & np.isfinite(g)
    p, g = p[keep], g[keep]
    if p.size < 3:
        return None
    p, g = _smooth(p), _smooth(g)
    peak = int(np.argmax(g))
    span = float(g.max() - g.min())
    value = float((g[peak] - g[-1]) / span) if span > 0 else 0.0
    proxy_rose = float(p[-1] - p[peak])
    fired = value > threshold and proxy_rose > 0
    msg = f"gold gave back {value:.0%} of its range since its peak; proxy changed {proxy_rose:+.3g} meanwhile"
    if fired:
        msg += ": the proxy reward is being over-optimised (gold falls while proxy rises)"
    return result("proxy_gold_gap", value, threshold, fired, msg)


def disagreement(rows: Sequence[dict], *, key: str = "rm/disagreement", threshold: float = 2.0) -> dict | None:
    """Reward-ensemble disagreement late in training over early: the policy moving where the
    reward models stop agreeing is a sign it exploits them (Coste et al. 2023)."""
    vals = _series(rows, key)
    if len(vals) < 2:
        return None
    return disagreement_change(*_early_late(vals), key=key, threshold=threshold)


def disagreement_change(
    early: float, late: float, *, key: str = "rm/disagreement", threshold: float = 2.0
) -> dict | None:
    """Ensemble disagreement ``late`` over ``early`` (the test of :func:`disagreement`; training
    uses it on each rollout against its first rollouts)."""
    value = late / early if early > 0 else (math.inf if late > 0 else 1.0)
    fired = value > threshold
    msg = f"{key} {early:.3g} → {late:.3g} ({value:.2f}x)"
    if fired:
        msg += ": the reward models disagree more and more on the policy's responses"
    return result("disagreement", value if math.isfinite(value) else None, threshold, fired, msg)


def sample_monitors(
    responses: Sequence[str],
    *,
    baseline: Sequence[str] | None = None,
    groups: Sequence[Sequence[str]] | None = None,
    lengths: Sequence[float] | None = None,
    baseline_lengths: Sequence[float] | None = None,
) -> dict[str, dict]:
    """The sample monitors of one policy, ``{name: result}`` (those with no input left out).

    ``groups`` (responses per prompt) feed :func:`diversity`; without groups of two or more, all
    responses form one group. Token ``lengths`` are used for the drift when both sides have them.
    """
    if groups is None or not any(len(g) >= 2 for g in groups):
        groups = [list(responses)]
    if lengths is None or baseline_lengths is None:
        lengths = baseline_lengths = None
    drift = None
    if baseline is not None:
        drift = length_drift(responses, baseline, lengths=lengths, baseline_lengths=baseline_lengths)
    out = {
        "length_drift": drift,
        "repetition": repetition(responses),
        "diversity": diversity(groups),
    }
    return {k: v for k, v in out.items() if v is not None}


GOLD_METRIC_KEYS = ("gold", "gold/score", "gold/mean")


def training_monitors(rows: Sequence[dict], *, proxy_key: str = "score") -> dict[str, dict]:
    """The metric-row monitors of one stage's ``metrics.jsonl`` rows (train split), ``{name: result}``."""
    out = {"entropy_collapse": entropy_collapse(rows), "disagreement": disagreement(rows)}
    gold_key = next((k for k in GOLD_METRIC_KEYS if any(k in r for r in rows)), None)
    if gold_key is not None:
        both = [r for r in rows if r.get(proxy_key) is not None and r.get(gold_key) is not None]
        out["proxy_gold_gap"] = proxy_gold_gap([r[proxy_key] for r in both], [r[gold_key] for r in both])
    return {k: v for k, v in out.items() if v is not None}
