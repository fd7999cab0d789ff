"""Reward accuracy per subset on a RewardBench-layout file (Lambert et al. 2024, arXiv:2403.13787).

A row is ``{"prompt": str, "chosen": str, "rejected": str | [str, ...], "subset": str?}`` (any
format :func:`alignlab.data.read_rows` reads: .jsonl, .json, .csv, .parquet, gzipped too). The
scorer is any ``score(prompts, responses) -> list[float]`` callable: a reward model, or a DPO
policy's implicit reward β·log π/π_ref, supplied by the caller.

Per row the outcome is 1 when the chosen response scores above every rejected one, ½ when it ties
the best rejected one, 0 otherwise (the ``rewards/accuracy`` convention: a tie counts ½). Accuracy
is the mean outcome per subset (rows without ``subset`` form ``"all"``), ``overall`` the mean over
rows, ``macro`` the unweighted mean over subsets. RewardBench's leaderboard groups subsets into
sections with its own weights; that grouping is not reproduced here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from alignlab.eval import stats

Score = Callable[[list, list], Sequence[float]]
DEFAULT_SUBSET = "all"


def load_rows(path: str | Path) -> list[dict]:
    """The file's rows, each checked for ``prompt``, ``chosen`` and ``rejected``."""
    from alignlab.data.sources import read_rows  # alignlab.data pulls in torch
    from alignlab.errors import DataError

    out = []
    for where, row in read_rows(path):
        for key in ("prompt", "chosen", "rejected"):
            if key not in row:
                raise DataError(
                    where, f"a RewardBench row needs 'prompt', 'chosen' and 'rejected'; '{key}' is missing", key
                )
        out.append(row)
    return out


def accuracy(rows: Sequence[dict], score: Score, *, batch_size: int = 64, confidence: float = 0.95) -> dict:
    """``{overall, macro, n, interval: {lo, hi}, subsets: {name: {accuracy, n, interval}}}``.

    ``score`` is called on batches of at most ``batch_size`` (prompt, response) pairs; the
    intervals are Wilson intervals with ties counting ½.
    """
    prompts, responses, owners = [], [], []  # owners[i] = (row index, 0 for chosen / 1 for rejected)
    for i, row in enumerate(rows):
        rejected = row["rejected"] if isinstance(row["rejected"], (list, tuple)) else [row["rejected"]]
        if not rejected:
            raise ValueError(f"row {i}: 'rejected' is an empty list")
        for resp, kind in [(row["chosen"], 0)] + [(r, 1) for r in rejected]:
            prompts.append(row["prompt"])
            responses.append(resp)
            owners.append((i, kind))
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        batch = [float(s) for s in score(prompts[start : start + batch_size], responses[start : start + batch_size])]
        if len(batch) != len(prompts[start : start + batch_size]):
            raise ValueError(
                f"score returned {len(batch)} values for {len(prompts[start : start + batch_size])} responses"
            )
        scores.extend(batch)
    chosen = np.full(len(rows), np.nan)
    best_rejected = np.full(len(rows), -np.inf)
    for (i, kind), s in zip(owners, scores):
        if kind == 0:
            chosen[i] = s
        else:
            best_rejected[i] = max(best_rejected[i], s)
    outcomes = stats.compare(chosen, best_rejected) if len(rows) else np.zeros(0)
    by_subset: dict[str, list[float]] = {}
    for row, o in zip(rows, outcomes):
        by_subset.setdefault(str(row.get("subset") or DEFAULT_SUBSET), []).append(float(o))

    def summary(values: Sequence[float]) -> dict:
        lo, hi = stats.wilson_interval(float(np.sum(values)), len(values), confidence)
        return {"accuracy": float(np.mean(values)), "n": len(values), "interval": {"lo": lo, "hi": hi}}

    subsets = {name: summary(v) for name, v in by_subset.items()}
    overall = summary(outcomes.tolist()) if len(rows) else {"accuracy": None, "n": 0, "interval": None}
    return {
        "overall": overall["accuracy"],
        "macro": float(np.mean([s["accuracy"] for s in subsets.values()])) if subsets else None,
        "n": len(rows),
        "interval": overall["interval"],
        "subsets": subsets,
    }


def evaluate_file(path: str | Path, score: Score, **kwargs) -> dict:
    """:func:`accuracy` on the rows of a RewardBench-layout file."""
    return accuracy(load_rows(path), score, **kwargs)
