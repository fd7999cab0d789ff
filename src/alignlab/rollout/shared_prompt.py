"""A group's prompt computed once: the rows of a rollout that share a prompt laid out as one row.

Group methods (GRPO, RLOO) sample k responses per prompt, and the prompt is most of every row
(71% of the tokens in the GRPO benchmark). The rows of one prompt become one row::

    [prompt | y1 | y2 | ... | yk]          (G, T): G distinct prompts, no padding inside

with a 4-D mask ``(G, 1, T, T)``: prompt tokens are causal among themselves, each response sees the
prompt and its own earlier tokens, never another response. Positions of every response continue
from the end of the prompt, as on a row of its own, so each response token sees exactly what it
sees in the plain ``[prompt | response]`` layout of :mod:`alignlab.rollout.experience`.

:func:`shared_response_hidden` returns the hidden states in the plain layout, ``(B, R, H)``, row
``b`` column ``t`` = the state that predicts response token ``t`` of row ``b``: the last prompt
position for ``t = 0`` (shared by the group's k responses, its gradient the sum of theirs), else
the response's own previous position. Everything downstream (the LM head, the value head, entropy,
the losses) reads the same tensor as before; only the trunk runs on fewer tokens. Padding columns
read the prompt's last state (finite; every consumer masks them).

Exact up to float rounding where the model honours 4-D masks and position ids
(:func:`alignlab.models.logprobs.shares_prefix_exactly`, probed once per stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.models.logprobs import hidden_states
from alignlab.rollout.experience import Experience


@dataclass
class SharedLayout:
    input_ids: torch.Tensor  # (G, T)
    attention_mask: torch.Tensor  # (G, 1, T, T) bool
    position_ids: torch.Tensor  # (G, T)
    source: torch.Tensor  # (B, R) flat index g·T + col of the state predicting response token t of row b

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())


def shared_layout(exp: Experience, pad_id: int = 0) -> SharedLayout | None:
    """The layout of the module docstring for the rows of ``exp`` (in any order), grouped by prompt;
    None when no two rows share a prompt (or a prompt is empty): then the plain layout is as cheap."""
    P = exp.prompt_width
    n_prompt = exp.prompt_mask.sum(-1).tolist()  # (B,)
    n_resp = exp.response_mask.sum(-1).long().tolist()  # (B,)
    groups: dict[tuple, list[int]] = {}
    for b in range(len(exp)):
        groups.setdefault(tuple(exp.prompt_ids[b, P - n_prompt[b] :].tolist()), []).append(b)
    if len(groups) == len(exp) or min(n_prompt) == 0:
        return None
    G, R = len(groups), exp.response_ids.shape[1]
    T = max(len(p) + sum(n_resp[b] for b in rows) for p, rows in groups.items())
    ids = torch.full((G, T), pad_id, dtype=torch.long)
    positions = torch.zeros((G, T), dtype=torch.long)
    owner = torch.full((G, T), -1, dtype=torch.long)  # -1 padding, 0 prompt, j + 1 the group's j-th response
    source = torch.zeros((len(exp), R), dtype=torch.long)
    for g, (prompt, rows) in enumerate(groups.items()):
        n = len(prompt)
        ids[g, :n] = torch.tensor(prompt, dtype=torch.long)
        positions[g, :n] = torch.arange(n)
        owner[g, :n] = 0
        last_prompt = g * T + n - 1  # predicts the first token of every response of the group
        col = n
        for j, b in enumerate(rows, start=1):
            L = n_resp[b]
            ids[g, col : col + L] = exp.response_ids[b, :L]
            positions[g, col : col + L] = torch.arange(n, n + L)
            owner[g, col : col + L] = j
            source[b] = last_prompt  # column 0, and the padding columns
            source[b, 1:L] = g * T + torch.arange(col, col + L - 1)
            col += L
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    sees = (owner[:, None, :] == 0) & (owner[:, :, None] >= 0)  # every real token sees the prompt
    sees |= (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] > 0)  # a response, its own tokens
    mask = (sees & causal[None]) | torch.eye(T, dtype=torch.bool)[None]  # padding sees itself: no NaN rows
    return SharedLayout(ids, mask[:, None], positions, source)


def shared_response_hidden(model, layout: SharedLayout, device) -> torch.Tensor:
    """Hidden states ``(B, R, H)`` predicting each response token, computed on the shared layout."""
    hidden = hidden_states(
        model, layout.input_ids.to(device), layout.attention_mask.to(device), layout.position_ids.to(device)
    )  # (G, T, H)
    return hidden.reshape(-1, hidden.shape[-1])[layout.source.to(device)]  # (B, R, H)
