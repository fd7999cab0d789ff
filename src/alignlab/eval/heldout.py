"""The alignment tax's measurement: NLL of held-out reference answers under a policy (torch).

:func:`heldout_records` picks the reference answers (SFT records): the held-out share of a
source as :func:`alignlab.data.split_records` splits it (the SFT stage's own split for the same
source, ``eval_fraction`` and seed), capped at ``limit``. :func:`heldout_nll` gives, per example,
the NLL summed over its response tokens (answer + EOS, the tokens SFT trains on) and their count;
the maths on those is :func:`alignlab.eval.compare.heldout_summary`.
"""

from __future__ import annotations


def heldout_records(source: str, *, fraction: float, limit: int, seed: int) -> list:
    """Up to ``limit`` SFT records of ``source``: its held-out share (``fraction``), or all when 0."""
    from alignlab.data import load_records, split_records

    records = load_records(source, "sft").records
    if fraction > 0 and len(records) > 1:
        records = split_records(records, fraction, seed)[1]
    return list(records[:limit])


def heldout_nll(
    model, tokenizer, records, *, max_length: int, max_prompt_length: int, batch_size: int = 8
) -> list[dict]:
    """``[{"nll": Σ −log π(y_t), "tokens": n, "where": file:line}]`` per record, in order (prompt
    tokens are conditioned on, not scored)."""
    import torch

    from alignlab.data.collate import pad_examples
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.models.logprobs import batch_logprobs

    examples, _ = tokenize_sft(records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(examples), batch_size):
                part = examples[s : s + batch_size]
                batch = pad_examples(part, pad)
                logp = batch_logprobs(model, batch).float().cpu()  # (B, T-1), 0 off the response tokens
                mask = batch["loss_mask"]  # (B, T-1)
                nll = -(logp * mask).sum(-1)  # (B,) summed per sequence
                for e, v, n in zip(part, nll.tolist(), mask.sum(-1).tolist()):
                    out.append({"nll": float(v), "tokens": int(n), "where": e.where})
    finally:
        model.train(was_training)
    return out
