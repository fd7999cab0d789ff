"""Batches of examples -> padded tensors.

Training batches are right-padded; generation batches are left-padded (so every prompt ends at
the last column and new tokens are appended for all rows at once). ``loss_mask`` marks the
response tokens that the loss covers; it is aligned with next-token log-probs, i.e. with
``input_ids[:, 1:]`` (shape ``(B, T-1)``). ``loss_weight`` is the number of units the batch's
loss averages over (response tokens for SFT, pairs, prompts or examples for the preference
losses): the training loop weighs micro-batches by it, so accumulation gives the mean over the
whole step.
"""

from __future__ import annotations

import torch

from alignlab.data.tokenize import IGNORE, Example, PairExample, RankedExample


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
    loss_mask = labels[:, 1:] != IGNORE  # (B, T-1)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "labels": labels,
        "loss_mask": loss_mask,
        "where": [e.where for e in examples],
        "n_tokens": int(attn.sum()),
        "loss_weight": int(loss_mask.sum()),  # a per-token loss (SFT) averages over these
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
    loss_mask = labels[:, 1:] != IGNORE
    return {
        "input_ids": ids,
        "attention_mask": mask4d[:, None],  # (B, 1, T, T)
        "position_ids": positions,
        "labels": labels,
        "loss_mask": loss_mask,
        "where": wheres,
        "n_tokens": int((segment > 0).sum()),
        "loss_weight": int(loss_mask.sum()),  # a per-token loss (SFT) averages over these
    }


def pack_sequences(examples: list[Example], pad_id: int, width: int) -> dict:
    """N sequences packed into rows of at most ``width`` tokens (first-fit decreasing), for per-sequence sums.

    Padding is what makes a batch of pairs slow: chosen and rejected responses differ in length,
    and on alignlab's demo preferences half of a padded batch is padding. Packed, every position
    is a real token. As :func:`pack_rows`, plus ``seq_index`` (R, T-1): the sequence (0..N-1, in
    the order given) that each next-token position belongs to, -1 where no loss applies;
    ``seq_lengths`` (N,): response tokens per sequence; ``n_seqs`` = N.
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for b in range(len(bins)):
            if used[b] + n <= width:
                bins[b].append(i)
                used[b] += n
                break
        else:
            bins.append([i])
            used.append(n)
    batch = pack_rows([[examples[i] for i in b] for b in bins], pad_id)
    owner = torch.full(batch["labels"].shape, -1, dtype=torch.long)  # (R, T): the sequence of each column
    for r, b in enumerate(bins):
        col = 0
        for i in b:
            n = len(examples[i].input_ids)
            owner[r, col : col + n] = i
            col += n
    seq_index = owner[:, 1:].masked_fill(~batch["loss_mask"], -1)  # (R, T-1), aligned with labels[:, 1:]
    batch["seq_index"] = seq_index
    batch["seq_lengths"] = torch.bincount(seq_index[seq_index >= 0], minlength=len(examples))  # (N,)
    batch["n_seqs"] = len(examples)
    return batch


def collate_sequences(examples: list[Example], pad_id: int, pack_width: int | None = None) -> dict:
    """Rows for per-sequence log-prob sums: packed when ``pack_width`` is given, else one per row."""
    if pack_width:
        return pack_sequences(examples, pad_id, pack_width)
    batch = pad_examples(examples, pad_id)
    batch["seq_lengths"] = batch["loss_mask"].sum(-1)
    return batch


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for generation: (ids, attention_mask), both (B, T), padded on the left."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        attn[i, width - len(s) :] = 1
    return ids, attn


# ----------------------------------------------------------------------------- preference batches
def collate_pairs(pairs: list[PairExample], pad_id: int, pack_width: int | None = None) -> dict:
    """B pairs -> one batch of 2B sequences: chosen ``0..B-1``, then rejected ``B..2B-1``.

    One forward pass of the policy then gives both sides: ``seq_logps[:B]`` are chosen,
    ``seq_logps[B:]`` rejected. Right-padded rows (keys as :func:`pad_examples`), or packed rows
    when ``pack_width`` is given (:func:`pack_sequences`); ``n_pairs`` = B; ``where`` has one entry
    per pair.
    """
    batch = collate_sequences([p.chosen() for p in pairs] + [p.rejected() for p in pairs], pad_id, pack_width)
    batch["where"] = [p.where for p in pairs]
    batch["n_pairs"] = len(pairs)
    batch["margins"] = torch.tensor(
        [float("nan") if p.margin is None else p.margin for p in pairs]
    )  # (B,) NaN: none given
    batch["loss_weight"] = len(pairs)  # the pairwise losses are per-pair means
    return batch


def collate_rankings(groups: list[RankedExample], pad_id: int) -> dict:
    """Ranked groups -> one right-padded batch of sum(K_i) rows, group after group.

    ``group_sizes`` lists each K_i (groups may differ in K) and ``ranks`` each group's ranks, so a
    listwise loss can cut the per-row rewards back into (n, K) blocks.
    """
    batch = pad_examples([e for g in groups for e in g.examples()], pad_id)
    batch["where"] = [g.where for g in groups]
    batch["group_sizes"] = [len(g.responses_ids) for g in groups]
    batch["ranks"] = [list(g.ranks) for g in groups]
    batch["loss_weight"] = len(groups)  # listwise losses are per-prompt means
    return batch


def collate_unpaired(
    examples: list[Example], pad_id: int, mismatched: list[Example] | None = None, pack_width: int | None = None
) -> dict:
    """KTO examples -> rows ``0..B-1`` the examples, then (if given) rows ``B..2B-1`` their mismatched
    (prompt_i, response_j) pairs, all in one right-padded batch.

    ``desirable`` is a (B,) bool tensor from ``meta["desirable"]``; ``n_examples`` = B.
    """
    rows = list(examples) + list(mismatched or [])
    batch = collate_sequences(rows, pad_id, pack_width)
    batch["where"] = [e.where for e in examples]
    batch["desirable"] = torch.tensor([bool(e.meta["desirable"]) for e in examples], dtype=torch.bool)
    batch["n_examples"] = len(examples)
    batch["loss_weight"] = len(examples)  # KTO is a per-example mean
    return batch
