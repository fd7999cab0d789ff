"""``alignlab score``: one score per record of a data file, with a trained reward-model folder (either layout)."""

from __future__ import annotations

from pathlib import Path

from alignlab.runs import atomic_write_jsonl


def detect_kind(spec: str) -> str:
    """preference (``chosen``), ranking (``responses``) or sft (a prompt with one response), from the first row."""
    from alignlab.data import read_rows

    for _, row in read_rows(spec):
        if "chosen" in row:
            return "preference"
        if "responses" in row:
            return "ranking"
        return "sft"
    return "sft"


def score_file(
    model: str, data: str, out: str, *, kind: str = "auto", batch_size: int = 16, device: str = "auto"
) -> dict:
    """Score every record of ``data`` with the reward model folder ``model``; one JSON line per record.

    Lines: preference ``{"where", "chosen_score", "rejected_score"}``; ranking ``{"where",
    "scores": [...]}``; sft (prompt + response) ``{"where", "score"}``. Scores are normalised
    (``alignlab_reward`` in config.json, or ``reward_norm.json`` in the older checkpoint layout:
    ``models.heads`` reads both).
    """
    from alignlab.data import load_records
    from alignlab.data.tokenize import tokenize_pairs, tokenize_rankings, tokenize_sft
    from alignlab.models.heads import load_reward_model, score_examples

    loaded = load_reward_model(model, device=device)
    rm, tok = loaded.model, loaded.tokenizer
    lengths = {
        "max_length": loaded.norm.get("max_length", 1024),
        "max_prompt_length": loaded.norm.get("max_prompt_length", 768),
    }
    kind = detect_kind(data) if kind == "auto" else kind
    records = load_records(data, kind).records

    def scores(examples):
        return score_examples(rm, examples, tok.pad_token_id, batch_size=batch_size, normalised=True).tolist()

    if kind == "preference":
        pairs, _ = tokenize_pairs(records, tok, **lengths)
        rows = [
            {"where": p.where, "chosen_score": c, "rejected_score": r}
            for p, c, r in zip(pairs, scores([p.chosen() for p in pairs]), scores([p.rejected() for p in pairs]))
        ]
    elif kind == "ranking":
        groups, _ = tokenize_rankings(records, tok, **lengths)
        flat = iter(scores([e for g in groups for e in g.examples()]))
        rows = [{"where": g.where, "scores": [next(flat) for _ in g.responses_ids]} for g in groups]
    else:
        examples, _ = tokenize_sft(records, tok, **lengths)
        rows = [{"where": e.where, "score": s} for e, s in zip(examples, scores(examples))]
    path = Path(out)
    atomic_write_jsonl(path, rows)
    return {"records": len(rows), "kind": kind, "out": str(path)}
