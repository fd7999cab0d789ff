"""``alignlab data check``: what is wrong with a preference file before it trains anything.

:func:`check_preferences` reads a preference file (any shape :mod:`alignlab.data` accepts) and
reports, each with the ``file:line`` of the rows concerned:

* **near-identical pairs** — chosen and rejected nearly the same text, so the label teaches
  little (or is a typo-level edit whose label may be noise): flagged when they differ in at most
  ``max_word_edits`` words (3; words inserted, deleted or replaced, from a word-level diff) or
  their character similarity reaches ``similar`` (0.9; ``difflib.SequenceMatcher`` ratio,
  2·matched characters / total characters, after lower-casing and collapsing whitespace).
  "2+2 equals 4." vs "2+2 is 4." differ in one word (similarity 0.73): flagged. A pair whose
  rejected answer is the chosen one behind a rude sentence differs in a dozen words: not flagged
  (characters are compared only for pairs whose word-level diff ratio is at least 0.5);
* **duplicates** — rows equal after that normalisation (exact), or whose prompt + chosen +
  rejected texts reach ``duplicate`` similarity (0.9; near). Candidates come from MinHash over
  word sets (so large files stay fast) and each is verified exactly;
* **length bias** — how often the chosen answer is the longer one (in words, pairs of equal
  length left out), with a two-sided exact binomial test against 1/2; flagged when p < ``alpha``
  and the rate is at least 0.1 away from 1/2 (a large file makes tiny biases "significant");
* **label balance** — where rows say where the chosen one was shown (``chosen_position`` A/B):
  the A share, with the same test (an annotator's position bias shows here); and the
  ``source``/``annotator`` counts and pairs per prompt;
* **agreement** — when rows carry ``annotator`` and several annotators labelled the same pair:
  Cohen's or Fleiss' κ (:mod:`alignlab.feedback.agreement`);
* **leaks** — with ``eval_path``: train prompts that also occur (normalised) in the eval file.

Rows that fail validation are listed under ``errors`` (``file:line: field: what``) and skipped.
:func:`render` turns the report into text for a terminal.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections import Counter, defaultdict

from alignlab.errors import DataError

SIMILAR = 0.9
MAX_WORD_EDITS = 3
DUPLICATE = 0.9
ALPHA = 0.01
MIN_EFFECT = 0.1
MAX_EXAMPLES = 5


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def similarity(a: str, b: str) -> float:
    """``SequenceMatcher`` ratio of the normalised texts, in [0, 1]."""
    return difflib.SequenceMatcher(None, normalise(a), normalise(b), autojunk=False).ratio()


def _word_diff(a: str, b: str) -> tuple[int, float]:
    """(words inserted, deleted or replaced, word-level ratio) between the normalised texts."""
    wa, wb = normalise(a).split(), normalise(b).split()
    m = difflib.SequenceMatcher(None, wa, wb, autojunk=False)
    edits = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in m.get_opcodes() if tag != "equal")
    return edits, m.ratio()


def word_edits(a: str, b: str) -> int:
    """Words inserted, deleted or replaced to turn ``a`` into ``b`` (a word-level diff, normalised text)."""
    return _word_diff(a, b)[0]


def binomial_p(k: int, n: int) -> float:
    """Two-sided exact binomial test of k successes in n trials against p = 1/2."""
    if n == 0:
        return 1.0
    lo = min(k, n - k)
    log_half_n = -n * math.log(2)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n) for i in range(lo + 1)
    )
    return min(1.0, 2 * tail)


def _prompt_key(prompt) -> str:
    return normalise("\n".join(f"{m.role}: {m.content}" for m in prompt))


def _read(path, kind: str = "preference"):
    """``(rows, errors)``: ``rows`` are ``(where, raw row, record)``; a file that cannot be read raises."""
    from alignlab.data import read_rows, records_from_row

    rows, errors = [], []
    for where, raw in read_rows(path):
        try:
            records, _ = records_from_row(raw, kind, where)
        except DataError as e:
            errors.append({"where": e.where, "message": str(e)})
            continue
        for rec in records:
            rows.append((where, raw, rec))
    return rows, errors


def _rate(k: int, n: int) -> dict:
    p = binomial_p(k, n)
    rate = k / n if n else None
    flag = bool(n and p < ALPHA and abs(rate - 0.5) >= MIN_EFFECT)
    return {"n": n, "k": k, "rate": rate, "p_value": p, "flag": flag}


def _near_identical(rows, threshold: float, max_edits: int) -> dict:
    hits = []
    for where, _, rec in rows:
        edits, word_ratio = _word_diff(rec.chosen, rec.rejected)
        # characters are compared only when the words are close (a character diff of long texts is slow)
        sim = similarity(rec.chosen, rec.rejected) if edits <= max_edits or word_ratio >= 0.5 else None
        if edits <= max_edits or (sim is not None and sim >= threshold):
            hits.append(
                {
                    "where": where,
                    "similarity": round(sim, 3),
                    "word_edits": edits,
                    "chosen": rec.chosen[:80],
                    "rejected": rec.rejected[:80],
                }
            )
    return {
        "threshold": threshold,
        "max_word_edits": max_edits,
        "count": len(hits),
        "examples": hits[:MAX_EXAMPLES],
        "where": [h["where"] for h in hits],
        "flag": bool(hits),
    }


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _candidates(token_sets: list[set[str]]) -> set[tuple[int, int]]:
    """Index pairs likely to have word-set Jaccard ≥ ~0.75: MinHash (24 hashes) in 8 bands of 3.

    P(a pair becomes a candidate) = 1 − (1 − J³)⁸: 0.99 at J = 0.75, 0.2 at J = 0.3, 0.001 at
    J = 0.05 — so the check scales to large files, and every candidate is verified exactly.
    Hashes are CRC32-based, so the result does not change from run to run.
    """
    import zlib

    import numpy as np

    n_hash, rows_per_band = 24, 3
    rng = np.random.default_rng(0)
    # multiply-shift hashing: (a·x + b) mod 2^64 with odd a, keep the high 32 bits (uint64 wraps)
    a = (rng.integers(0, 1 << 63, size=(n_hash, 1), dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
    b = rng.integers(0, 1 << 63, size=(n_hash, 1), dtype=np.uint64)
    buckets: dict = defaultdict(list)
    for idx, toks in enumerate(token_sets):
        if not toks:
            continue
        h = np.fromiter((zlib.crc32(t.encode("utf-8")) for t in toks), dtype=np.uint64, count=len(toks))[None, :]
        with np.errstate(over="ignore"):
            sig = ((a * h + b) >> np.uint64(32)).min(axis=1).tolist()  # (n_hash,)
        for band in range(n_hash // rows_per_band):
            key = (band, *sig[band * rows_per_band : (band + 1) * rows_per_band])
            buckets[key].append(idx)
    pairs = set()
    for members in buckets.values():
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                pairs.add((members[i], members[j]))
    return pairs


def _duplicates(rows, threshold: float) -> dict:
    exact, seen = [], {}
    texts = []
    for where, _, rec in rows:
        key = (_prompt_key(rec.prompt), normalise(rec.chosen), normalise(rec.rejected))
        if key in seen:
            exact.append({"where": [seen[key], where]})
        else:
            seen[key] = where
            texts.append((where, " | ".join(key)))
    tokens = [_tokens(t) for _, t in texts]
    near = []
    for i, j in sorted(_candidates(tokens)):
        if len(tokens[i] & tokens[j]) < 0.75 * len(tokens[i] | tokens[j]):
            continue
        if _word_diff(texts[i][1], texts[j][1])[1] < 0.5:  # same words in another order: not a copy
            continue
        m = difflib.SequenceMatcher(None, texts[i][1], texts[j][1], autojunk=False)
        if m.real_quick_ratio() < threshold or m.quick_ratio() < threshold:
            continue
        sim = m.ratio()
        if sim >= threshold:
            near.append({"where": [texts[i][0], texts[j][0]], "similarity": round(sim, 3)})
    return {
        "threshold": threshold,
        "exact": len(exact),
        "near": len(near),
        "examples": (exact + near)[:MAX_EXAMPLES],
        "where": [e["where"] for e in exact + near],
        "flag": bool(exact or near),
    }


def _length_bias(rows) -> dict:
    k = n = 0
    for _, _, rec in rows:
        lc, lr = len(rec.chosen.split()), len(rec.rejected.split())
        if lc != lr:
            n += 1
            k += lc > lr
    out = _rate(k, n)
    out["chosen_longer"] = out.pop("k")
    out["pairs"] = out.pop("n")
    return out


def _balance(rows) -> dict:
    positions = Counter(
        str(raw.get("chosen_position")) for _, raw, _ in rows if raw.get("chosen_position") in ("A", "B")
    )
    per_prompt = Counter(_prompt_key(rec.prompt) for _, _, rec in rows)
    out = {
        "sources": dict(Counter(str(raw.get("source")) for _, raw, _ in rows if raw.get("source") is not None)),
        "annotators": dict(
            Counter(str(raw.get("annotator")) for _, raw, _ in rows if raw.get("annotator") is not None)
        ),
        "prompts": len(per_prompt),
        "pairs_per_prompt": {
            "mean": len(rows) / len(per_prompt) if per_prompt else 0.0,
            "max": max(per_prompt.values(), default=0),
        },
        "position": None,
        "flag": False,
    }
    n = positions["A"] + positions["B"]
    if n:
        pos = _rate(positions["A"], n)
        pos["first_chosen"] = pos.pop("k")
        out["position"] = pos
        out["flag"] = pos["flag"]
    return out


def _agreement(rows) -> dict | None:
    from alignlab.feedback.agreement import agreement

    items: dict = defaultdict(dict)
    for _, raw, rec in rows:
        who = raw.get("annotator")
        if who is None:
            continue
        a, b = sorted((normalise(rec.chosen), normalise(rec.rejected)))
        items[(_prompt_key(rec.prompt), a, b)][str(who)] = normalise(rec.chosen)
    shared = {k: v for k, v in items.items() if len(v) >= 2}
    if not shared:
        return None
    out = agreement(shared)
    out["flag"] = out["kappa"] is not None and out["kappa"] < 0.2
    return out


def _leaks(rows, eval_path) -> dict:
    from alignlab.data import read_rows, records_from_row

    eval_prompts = {}
    for where, raw in read_rows(eval_path):
        try:
            for rec in records_from_row(raw, "prompt", where)[0]:
                eval_prompts.setdefault(_prompt_key(rec.prompt), where)
        except DataError:
            continue
    hits = [
        {"where": [where, eval_prompts[_prompt_key(rec.prompt)]]}
        for where, _, rec in rows
        if _prompt_key(rec.prompt) in eval_prompts
    ]
    return {
        "eval": os.fspath(eval_path),
        "count": len(hits),
        "examples": hits[:MAX_EXAMPLES],
        "where": [h["where"] for h in hits],
        "flag": bool(hits),
    }


def check_preferences(
    path,
    eval_path=None,
    *,
    similar: float = SIMILAR,
    max_word_edits: int = MAX_WORD_EDITS,
    duplicate: float = DUPLICATE,
) -> dict:
    """The report on a preference file (see the module docstring): ``{file, rows, records,
    errors, checks: {near_identical, duplicates, length_bias, balance, agreement, leaks},
    findings: [one line each], ok}``. ``ok`` is True when nothing is flagged and no row failed."""
    rows, errors = _read(path)
    checks = {
        "near_identical": _near_identical(rows, similar, max_word_edits),
        "duplicates": _duplicates(rows, duplicate),
        "length_bias": _length_bias(rows),
        "balance": _balance(rows),
        "agreement": _agreement(rows),
        "leaks": _leaks(rows, eval_path) if eval_path is not None else None,
    }
    findings = []
    c = checks["near_identical"]
    if c["flag"]:
        findings.append(
            f"{c['count']} pairs whose chosen and rejected are nearly the same (<= {max_word_edits} words apart or "
            f"similarity >= {similar}): {_places(c['where'])}"
        )
    c = checks["duplicates"]
    if c["flag"]:
        findings.append(f"{c['exact']} exact and {c['near']} near-duplicate rows: {_places(c['where'])}")
    c = checks["length_bias"]
    if c["flag"]:
        findings.append(
            f"length bias: the chosen answer is the longer one in {c['chosen_longer']} of {c['pairs']} pairs ({c['rate']:.0%}, p = {c['p_value']:.2g})"
        )
    c = checks["balance"]
    if c["flag"]:
        p = c["position"]
        findings.append(
            f"position bias: the chosen answer was shown first in {p['first_chosen']} of {p['n']} labels ({p['rate']:.0%}, p = {p['p_value']:.2g})"
        )
    c = checks["agreement"]
    if c and c["flag"]:
        findings.append(
            f"low annotator agreement: {c['method']} kappa = {c['kappa']:.2f} over {c['items']} shared pairs"
        )
    c = checks["leaks"]
    if c and c["flag"]:
        findings.append(f"{c['count']} train prompts also in the eval file {c['eval']}: {_places(c['where'])}")
    if errors:
        findings.append(f"{len(errors)} rows could not be read: {_places([e['where'] for e in errors])}")
    return {
        "file": os.fspath(path),
        "rows": len({w for w, _, _ in rows}) + len(errors),
        "records": len(rows),
        "errors": errors,
        "checks": checks,
        "findings": findings,
        "ok": not findings,
    }


def _places(where: list, limit: int = MAX_EXAMPLES) -> str:
    shown = [" & ".join(w) if isinstance(w, (list, tuple)) else str(w) for w in where[:limit]]
    more = f" (+{len(where) - limit} more)" if len(where) > limit else ""
    return ", ".join(shown) + more


def render(report: dict) -> str:
    """The report as text: a summary line, then one block per check."""
    c = report["checks"]
    lines = [f"{report['file']}: {report['rows']} rows, {report['records']} preference pairs"]
    lines += [f"  ! {f}" for f in report["findings"]] or ["  no problems found"]
    ni, du, lb, ba = (
        c["near_identical"],
        c["duplicates"],
        c["length_bias"],
        c["balance"],
    )
    lines.append(
        f"near-identical pairs: {ni['count']} (<= {ni['max_word_edits']} words apart or similarity >= {ni['threshold']})"
    )
    for e in ni["examples"]:
        lines.append(
            f"    {e['where']}: {e['word_edits']} words apart, similarity {e['similarity']:.2f}: "
            f"{e['chosen']!r} vs {e['rejected']!r}"
        )
    lines.append(f"duplicates: {du['exact']} exact, {du['near']} near (similarity >= {du['threshold']})")
    for e in du["examples"]:
        lines.append(f"    {' & '.join(e['where'])}" + (f": {e['similarity']:.2f}" if "similarity" in e else ": exact"))
    if lb["pairs"]:
        lines.append(
            f"length: chosen is longer in {lb['chosen_longer']}/{lb['pairs']} pairs ({lb['rate']:.0%}, binomial p = {lb['p_value']:.2g})"
        )
    else:
        lines.append("length: every pair has equal lengths")
    lines.append(
        f"balance: {ba['prompts']} prompts, {ba['pairs_per_prompt']['mean']:.1f} pairs per prompt (max {ba['pairs_per_prompt']['max']})"
    )
    if ba["position"]:
        p = ba["position"]
        lines.append(
            f"  chosen shown first: {p['first_chosen']}/{p['n']} ({p['rate']:.0%}, binomial p = {p['p_value']:.2g})"
        )
    for key in ("sources", "annotators"):
        if ba[key]:
            lines.append(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in sorted(ba[key].items())))
    ag = c["agreement"]
    if ag:
        kappa = "undefined" if ag["kappa"] is None else f"{ag['kappa']:.2f}"
        lines.append(
            f"agreement: {ag['method']} kappa {kappa} over {ag['items']} shared pairs ({', '.join(ag['annotators'])})"
        )
    lk = c["leaks"]
    if lk:
        lines.append(f"leaks into {lk['eval']}: {lk['count']}")
    for e in report["errors"][:MAX_EXAMPLES]:
        lines.append(f"  error: {e['message']}")
    return "\n".join(lines)
