"""Batches of examples -> padded tensors.

Training batches are right-padded; generation batches are left-padded (so every prompt ends at
the last column and new tokens are appended for all rows at once). ``loss_mask`` marks the
response tokens that the loss covers; it is aligned with next-token log-probs, i.e. with
``input_ids[:, 1:]`` (shape ``(B, T-1)``). ``loss_weight`` is the number of units the batch's
loss averages over (response tokens for SFT, pairs, prompts or examples for the preference
losses): the training loop weighs micro-batches by it, so accumulation gives the mean over the
whole step.

Preference pairs come two ways: chosen and rejected on rows of their own (:func:`collate_pairs`),
or one ``[prompt | chosen | rejected]`` segment per pair whose prompt is computed once
(:func:`collate_shared_pairs`, ``data.share_prompt``); both give the same ``seq_logps``.
"""

from __future__ import annotations

import torch

from alignlab.data.layout import cheapest_rows
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


def collate_shared_pairs(
    pairs: list[PairExample], pad_id: int, pack_width: int | None = None, *, attention_width: float | None = None
) -> dict:
    """B pairs laid out as ``[prompt | chosen | rejected]``: each prompt token is computed once.

    Within a pair the 4-D mask ``(R, 1, T, T)`` is causal, except that rejected tokens do not see
    chosen ones: chosen attends to prompt + chosen, rejected to prompt + rejected. Positions of the
    rejected segment continue from the end of the prompt, as if chosen were not there, so every
    response token sees what it would see on its own row. One pair per row; or (``pack_width``)
    several per row, first-fit decreasing into rows of ``max(pack_width, longest pair)`` columns; or
    (``attention_width``) the row count of least padding-plus-attention work
    (:func:`alignlab.data.layout.cheapest_rows`). Attention never crosses pairs (block-diagonal, as
    :func:`pack_rows`), so every layout gives the same numbers.

    Log-probs are not a plain shift here: the first rejected token is predicted from the **last
    prompt position**, which also predicts the first chosen token (that hidden state is read twice,
    and its gradient is the sum of both uses). So the loss positions are listed flat, N of them:

    * ``logp_source`` (N,): flat index ``row * T + col`` of the hidden state that predicts ...
    * ``logp_target`` (N,): ... this token;
    * ``seq_index`` (N,): its sequence, chosen ``0..B-1`` then rejected ``B..2B-1`` (as
      :func:`collate_pairs`), so ``seq_logps`` and the reference cache read them unchanged;
    * ``score_index`` (2B,): flat index of each response's last token (a reward model's score);
    * ``seq_lengths`` (2B,), ``n_seqs`` = 2B, ``n_pairs`` = B, ``margins``, ``where``; ``n_tokens``
      counts real tokens (a prompt once), ``loss_weight`` = B (per-pair means).
    """
    lengths = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs]
    if pack_width:
        width = max(pack_width, max(lengths))
        bins: list[list[int]] = []
        used: list[int] = []
        for i in sorted(range(len(pairs)), key=lambda i: -lengths[i]):
            for b in range(len(bins)):
                if used[b] + lengths[i] <= width:
                    bins[b].append(i)
                    used[b] += lengths[i]
                    break
            else:
                bins.append([i])
                used.append(lengths[i])
    elif attention_width:
        bins = cheapest_rows(lengths, attention_width)
    else:
        bins = [[i] for i in range(len(pairs))]
    B, R = len(pairs), len(bins)
    T = max(sum(lengths[i] for i in b) for b in bins)
    ids = torch.full((R, T), pad_id, dtype=torch.long)
    positions = torch.zeros((R, T), dtype=torch.long)
    segment = torch.zeros((R, T), dtype=torch.long)  # 0 = padding, k = k-th pair of the row
    rejected_part = torch.zeros((R, T), dtype=torch.bool)  # columns of rejected tokens
    chosen_part = torch.zeros((R, T), dtype=torch.bool)  # columns of chosen tokens
    source, target, owner = [], [], []
    score = [0] * (2 * B)
    for r, b in enumerate(bins):
        col = 0
        for k, i in enumerate(b, start=1):
            p, c, j = pairs[i].prompt_ids, pairs[i].chosen_ids, pairs[i].rejected_ids
            n = lengths[i]
            ids[r, col : col + n] = torch.tensor(p + c + j, dtype=torch.long)
            positions[r, col : col + n] = torch.tensor(
                list(range(len(p) + len(c))) + list(range(len(p), len(p) + len(j)))
            )
            segment[r, col : col + n] = k
            chosen_part[r, col + len(p) : col + len(p) + len(c)] = True
            rejected_part[r, col + len(p) + len(c) : col + n] = True
            last_prompt = r * T + col + len(p) - 1  # predicts the first token of both responses
            for seq, start, resp in ((i, col + len(p), c), (B + i, col + len(p) + len(c), j)):
                # token t of the response is predicted at column start + t - 1, except t = 0: the prompt's end
                for t, tok in enumerate(resp):
                    if t == 0 and not p:
                        continue  # no prompt: nothing predicts the first token (as on a row of its own)
                    source.append(last_prompt if t == 0 else r * T + start + t - 1)
                    target.append(tok)
                    owner.append(seq)
                score[seq] = r * T + start + len(resp) - 1 if resp else last_prompt
            col += n
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] > 0)  # (R, T, T)
    rejected_sees_chosen = rejected_part[:, :, None] & chosen_part[:, None, :]  # (R, T, T)
    mask4d = same & causal[None] & ~rejected_sees_chosen
    mask4d = mask4d | torch.eye(T, dtype=torch.bool)[None]  # padding attends to itself: no NaN rows
    seq_index = torch.tensor(owner, dtype=torch.long)  # (N,)
    return {
        "input_ids": ids,
        "attention_mask": mask4d[:, None],  # (R, 1, T, T)
        "position_ids": positions,
        "logp_source": torch.tensor(source, dtype=torch.long),  # (N,)
        "logp_target": torch.tensor(target, dtype=torch.long),  # (N,)
        "seq_index": seq_index,  # (N,)
        "seq_lengths": torch.bincount(seq_index, minlength=2 * B),  # (2B,)
        "score_index": torch.tensor(score, dtype=torch.long),  # (2B,)
        "n_seqs": 2 * B,
        "n_pairs": B,
        "where": [p.where for p in pairs],
        "margins": torch.tensor([float("nan") if p.margin is None else p.margin for p in pairs]),  # (B,)
        "n_tokens": int((segment > 0).sum()),
        "loss_weight": B,  # the pairwise losses are per-pair means
    }


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
