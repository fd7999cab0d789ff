"""Inter-annotator agreement: Cohen's κ for two annotators, Fleiss' κ for more.

Both compare the observed agreement P_o with the agreement P_e expected by chance from how often
each category is used: κ = (P_o − P_e) / (1 − P_e); 1 is perfect agreement, 0 chance level.
κ is undefined (``None``) when P_e = 1 (every label in one category).

* Cohen (1960): two annotators on the same N items. P_o = share of items labelled alike;
  P_e = Σ_c p_A(c)·p_B(c), each annotator's own category frequencies.
* Fleiss (1971): items each labelled by n_i ≥ 2 annotators. Per item,
  P_i = (Σ_c n_ic² − n_i) / (n_i(n_i − 1)), the share of agreeing rater pairs; P_o = mean P_i;
  P_e = Σ_c p_c² with p_c the share of all labels in category c. Items with different numbers of
  raters are allowed (each P_i uses its own n_i), a common generalisation of Fleiss' formula.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence


def _kappa(p_o: float, p_e: float) -> float | None:
    return None if p_e >= 1 - 1e-12 else (p_o - p_e) / (1 - p_e)


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> dict:
    """``{"kappa", "observed", "expected", "items"}`` for two annotators' labels of the same items."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs labels of the same items, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return {"kappa": None, "observed": None, "expected": None, "items": 0}
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[c] * cb[c] for c in ca) / (n * n)
    return {"kappa": _kappa(p_o, p_e), "observed": p_o, "expected": p_e, "items": n}


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> dict:
    """``{"kappa", "observed", "expected", "items"}``; ``items[i]`` holds item i's labels (one per rater)."""
    items = [list(x) for x in items if len(x) >= 2]
    if not items:
        return {"kappa": None, "observed": None, "expected": None, "items": 0}
    totals: Counter = Counter()
    per_item = []
    for labels in items:
        counts = Counter(labels)
        totals.update(counts)
        n_i = len(labels)
        per_item.append((sum(v * v for v in counts.values()) - n_i) / (n_i * (n_i - 1)))
    n_labels = sum(totals.values())
    p_o = sum(per_item) / len(per_item)
    p_e = sum((v / n_labels) ** 2 for v in totals.values())
    return {
        "kappa": _kappa(p_o, p_e),
        "observed": p_o,
        "expected": p_e,
        "items": len(items),
    }


def agreement(labels: Mapping[Hashable, Mapping[str, Hashable]]) -> dict:
    """Agreement over ``{item: {annotator: label}}``: Cohen's κ when exactly two annotators took
    part, Fleiss' κ over the items with ≥ 2 labels otherwise. Adds ``method`` and ``annotators``."""
    annotators = sorted({a for per in labels.values() for a in per})
    if len(annotators) < 2:
        return {
            "method": None,
            "kappa": None,
            "observed": None,
            "expected": None,
            "items": 0,
            "annotators": annotators,
        }
    if len(annotators) == 2:
        x, y = annotators
        shared = [per for per in labels.values() if x in per and y in per]
        out = cohen_kappa([p[x] for p in shared], [p[y] for p in shared])
        out["method"] = "cohen"
    else:
        out = fleiss_kappa([list(per.values()) for per in labels.values()])
        out["method"] = "fleiss"
    out["annotators"] = annotators
    return out
