"""Comparisons with the baseline beyond the gold win rate: the AI judge's win rate and its agreement
with gold, the alignment tax (held-out NLL), several objectives. Numbers in, dicts out (numpy only).

* **Judge.** A policy row's ``judge`` is the judge's P(this response ≻ the baseline's response),
  both orders averaged (:class:`alignlab.feedback.judge.Comparison`), for the pair
  :func:`index_pairs` forms: the policy's k-th response to a prompt with the baseline's k-th
  response to the same prompt. A pair's outcome is 1 (P > ½ + margin), ½ (|P − ½| ≤ margin) or 0;
  the win rate is the mean over prompts of each prompt's mean outcome (as for gold). Agreement
  with gold is over the same pairs whose gold values differ by more than ``tie_tol``: the share
  where the judge picks the gold-better response, a judge tie counting ½.
* **Alignment tax.** Per held-out example i (a reference answer), ``nll_i`` (summed over its
  response tokens) and ``tokens_i``; the example's per-token NLL is nll_i / tokens_i. ``nll`` is
  the mean of those over examples (per sequence, each example weighs the same) with its intervals;
  ``nll_pooled`` is Σ nll_i / Σ tokens_i (per token) and ``perplexity`` exp of it. The tax is the
  paired mean of (policy − baseline) per-token NLL over the same examples: positive means the
  policy fits the reference answers worse than the baseline.
* **Objectives.** Each row's ``objectives`` ``{name: value}``; per objective the mean over responses
  and the paired gain over the baseline per prompt (the same pairing as the gold gain).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alignlab.eval import stats


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(prompt) -> str:
    from alignlab.eval.evaluate import prompt_key

    return prompt_key(prompt)


def index_pairs(rows: Sequence[dict], base_rows: Sequence[dict]) -> list[tuple[int, int]]:
    """``(i, j)``: ``rows[i]`` is the policy's k-th response to a prompt, ``base_rows[j]`` the
    baseline's k-th response to the same prompt (k counted in row order); unmatched rows are left out."""
    base: dict[str, list[int]] = {}
    for j, r in enumerate(base_rows):
        base.setdefault(_key(r["prompt"]), []).append(j)
    seen: dict[str, int] = {}
    out = []
    for i, r in enumerate(rows):
        key = _key(r["prompt"])
        k = seen.get(key, 0)
        seen[key] = k + 1
        if k < len(base.get(key, ())):
            out.append((i, base[key][k]))
    return out


def paired_gain(policy: dict[str, list[float]], base: dict[str, list[float]], **kw) -> dict:
    """Paired mean over shared prompts of (policy's mean − baseline's mean) with intervals."""
    shared = sorted(policy.keys() & base.keys())  # sorted: the bootstrap must not depend on hashing
    return stats.paired_difference([np.mean(policy[k]) for k in shared], [np.mean(base[k]) for k in shared], **kw)


def judge_summary(
    rows: Sequence[dict],
    base_rows: Sequence[dict],
    *,
    margin: float = 0.0,
    tie_tol: float = 0.0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict | None:
    """The judge's win rate over the baseline and its agreement with gold (module docstring); None
    when no row has a judgement."""
    pairs = [(i, j) for i, j in index_pairs(rows, base_rows) if _finite(rows[i].get("judge"))]
    if not pairs:
        return None
    prob = np.array([float(rows[i]["judge"]) for i, _ in pairs])  # (P,)
    outcome = stats.compare(prob, np.full_like(prob, 0.5), tie_tol=margin)  # (P,) 1, ½ or 0
    by_prompt: dict[str, list[float]] = {}
    for (i, _), o in zip(pairs, outcome):
        by_prompt.setdefault(_key(rows[i]["prompt"]), []).append(float(o))
    win = stats.win_rate(
        [float(np.mean(by_prompt[k])) for k in sorted(by_prompt)], confidence=confidence, n_boot=n_boot, seed=seed
    )
    with_gold = [
        n for n, (i, j) in enumerate(pairs) if _finite(rows[i].get("gold")) and _finite(base_rows[j].get("gold"))
    ]
    agreement = None
    if with_gold:
        gold = stats.compare(
            [float(rows[pairs[n][0]]["gold"]) for n in with_gold],
            [float(base_rows[pairs[n][1]]["gold"]) for n in with_gold],
            tie_tol=tie_tol,
        )
        judged = outcome[with_gold]
        decided = gold != stats.TIE
        agree = np.where(gold == stats.WIN, judged, 1.0 - judged)[decided]  # 1 agree, ½ judge tie, 0 disagree
        n = int(agree.size)
        agreement = {
            "agreement": float(agree.mean()) if n else None,
            "n": n,
            "gold_ties": int((~decided).sum()),
            "wilson": list(stats.wilson_interval(float(agree.sum()), n, confidence)) if n else None,
        }
    consistent = [bool(rows[i]["judge_consistent"]) for i, _ in pairs if rows[i].get("judge_consistent") is not None]
    return {
        "pairs": len(pairs),
        "mean_prob": float(prob.mean()),
        "pair_outcomes": {
            "wins": int((outcome == stats.WIN).sum()),
            "ties": int((outcome == stats.TIE).sum()),
            "losses": int((outcome == stats.LOSS).sum()),
        },
        "win_rate": win,
        "agreement": agreement,
        "position_consistency": float(np.mean(consistent)) if consistent else None,
    }


def _per_token(rows: Sequence[dict]) -> np.ndarray:
    """Each example's NLL per response token, NaN where it has no token: ``(N,)``."""
    return np.array(
        [float(r["nll"]) / r["tokens"] if _finite(r.get("nll")) and r.get("tokens") else math.nan for r in rows]
    )


def heldout_summary(
    heldout: dict[str, Sequence[dict]], baseline: str, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, dict]:
    """``{policy: {nll, nll_pooled, perplexity, n_examples, n_tokens, tax}}`` from per-example rows
    ``{"nll": summed NLL, "tokens": int}``, the same examples in the same order for every policy."""
    lengths = {name: len(rows) for name, rows in heldout.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"heldout: every policy must score the same examples, got counts {lengths}")
    base = _per_token(heldout[baseline]) if baseline in heldout else None
    kw = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    out = {}
    for name, rows in heldout.items():
        x = _per_token(rows)
        ok = np.isfinite(x)
        tokens = int(sum(r.get("tokens") or 0 for r, k in zip(rows, ok) if k))
        total = float(sum(float(r["nll"]) for r, k in zip(rows, ok) if k))
        pooled = total / tokens if tokens else None
        tax = None
        if base is not None and name != baseline:
            both = ok & np.isfinite(base)
            tax = stats.paired_difference(x[both], base[both], **kw)
        out[name] = {
            "nll": stats.mean_interval(x[ok], **kw),
            "nll_pooled": pooled,
            "perplexity": math.exp(pooled) if pooled is not None and pooled < 700 else None,
            "n_examples": int(ok.sum()),
            "n_tokens": tokens,
            "tax": tax,
        }
    return out


def objective_values(rows: Sequence[dict], name: str) -> dict[str, list[float]]:
    """``{prompt key: [values]}`` of one objective."""
    out: dict[str, list[float]] = {}
    for r in rows:
        v = (r.get("objectives") or {}).get(name)
        if _finite(v):
            out.setdefault(_key(r["prompt"]), []).append(float(v))
    return out


def objectives_summary(
    rows: Sequence[dict],
    base_rows: Sequence[dict] | None,
    names: Sequence[str],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, dict]:
    """``{objective: {"mean": mean_interval, "gain": paired_gain | None}}`` (gain None for the baseline)."""
    kw = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    out = {}
    for name in names:
        mine = objective_values(rows, name)
        values = [float(v) for r in rows if _finite(v := (r.get("objectives") or {}).get(name))]  # row order
        gain = paired_gain(mine, objective_values(base_rows, name), **kw) if base_rows is not None else None
        out[name] = {"mean": stats.mean_interval(values, **kw), "gain": gain}
    return out
