"""Batches of examples -> padded tensors.

Training batches are right-padded; generation batches are left-padded (so every prompt ends at
the last column and new tokens are appended for all rows at once). ``loss_mask`` marks the
response tokens that the loss covers; it is aligned with next-token log-probs, i.e. with
``input_ids[:, 1:]`` (shape ``(B, T-1)``).
"""
from __future__ import annotations

import torch

from alignlab.data.tokenize import IGNORE, Example


def pad_examples(examples: list[Example], pad_id: int, *, side: str = "right") -> dict:
    """``input_ids``, ``attention_mask``, ``labels`` (B, T) and ``loss_mask`` (B, T-1)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(e.input_ids)
        attn[i, sl] = 1
        labels[i, sl] = torch.tensor(e.labels)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "labels": labels,
        "loss_mask": labels[:, 1:] != IGNORE,  # (B, T-1)
        "where": [e.where for e in examples],
        "n_tokens": int(attn.sum()),
    }


def pack_rows(groups: list[list[Example]], pad_id: int) -> dict:
    """Packed rows: several examples per row, positions restarting, no attention across examples.

    The attention mask is 4-D ``(B, 1, T, T)``: causal and block-diagonal by example, so a packed
    row computes exactly what its examples would compute alone.
    """
    width = max(sum(len(e.input_ids) for e in g) for g in groups)
    B = len(groups)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    positions = torch.zeros((B, width), dtype=torch.long)
    segment = torch.zeros((B, width), dtype=torch.long)  # 0 = padding, k = k-th example of the row
    wheres = []
    for i, group in enumerate(groups):
        col = 0
        for k, e in enumerate(group, start=1):
            n = len(e.input_ids)
            ids[i, col : col + n] = torch.tensor(e.input_ids)
            lab = list(e.labels)
            lab[0] = IGNORE  # first token of an example is never predicted from the previous one
            labels[i, col : col + n] = torch.tensor(lab)
            positions[i, col : col + n] = torch.arange(n)
            segment[i, col : col + n] = k
            col += n
            wheres.append(e.where)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    same = segment[:, :, None] == segment[:, None, :]  # (B, T, T)
    mask4d = same & causal[None] & (segment[:, :, None] > 0)
    mask4d = mask4d | torch.eye(width, dtype=torch.bool)[None]  # padding attends to itself: no NaN rows
    return {
        "input_ids": ids,
        "attention_mask": mask4d[:, None],  # (B, 1, T, T)
        "position_ids": positions,
        "labels": labels,
        "loss_mask": labels[:, 1:] != IGNORE,
        "where": wheres,
        "n_tokens": int((segment > 0).sum()),
    }


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for generation: (ids, attention_mask), both (B, T), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attn[i, width - len(s) :] = 1
    return ids, attn
