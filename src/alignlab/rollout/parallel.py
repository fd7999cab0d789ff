"""One rollout across several processes (torchrun): split the sampling and the training forward, nothing else.

Process ``r`` of ``W``:

* samples, scores and runs the no-grad pass (log π_old, log π_ref, values) for the prompts
  ``index[r::W]`` of the step's prompts (:func:`my_share`), with its own RNG stream;
* gathers the whole rollout (:func:`gather_rollout`): every process then holds the one-process
  rollout, rows in the one-process order ``[prompt0 × k, prompt1 × k, ...]``, padded to the same
  widths. Everything computed from the rollout as a whole — PPO's whitened advantages, the reward
  normaliser, group baselines (a group never spans processes), DAPO's dynamic sampling, the
  adaptive KL controller, the monitors — is the one-process code on the one-process rollout, alike
  in every process, so rank 0's checkpoint is every process's state;
* in each minibatch computes rows ``r::W`` with gradient and gathers the other rows' log-probs and
  values, detached (:func:`split_policy_forward`). The loss is then evaluated on the whole
  minibatch — the same value and stats in every process as in one — while the gradient flows only
  through this process's rows. Each process backpropagates ``W · loss`` and DDP averages, so the
  step's gradient is the one-process gradient for every loss that adds up per-row terms (every
  policy, value and KL loss here, whatever its reduction: per token, per sequence, or over the
  minibatch's tokens).

Sampled tokens depend on the number of processes (each process has its own stream, seeded by
(seed, step, rank), so resume stays exact); given the tokens, nothing else does.
"""

from __future__ import annotations

import dataclasses

import torch

from alignlab import distributed
from alignlab.rollout.experience import Experience
from alignlab.rollout.passes import policy_forward

_LEFT = ("prompt_ids", "prompt_mask")  # (B, P), left-padded
_RIGHT = ("response_ids", "response_mask", "old_logprobs", "ref_logprobs", "values")  # (B, R), right-padded


def my_share(index: list) -> list:
    """This process's part of a step's prompts: ``index[r::W]``."""
    return index[distributed.rank() :: distributed.world_size()]


def _widen(exp: Experience, P: int, R: int, pad_id: int) -> dict:
    """The tensor fields of ``exp`` padded to prompt width ``P`` (left) and response width ``R`` (right)."""
    out = {}
    for f in dataclasses.fields(exp):
        t = getattr(exp, f.name)
        if not isinstance(t, torch.Tensor):
            continue
        fill = pad_id if f.name in ("prompt_ids", "response_ids") else 0
        if f.name in _LEFT:
            t = torch.nn.functional.pad(t, (P - t.shape[1], 0), value=fill)
        elif f.name in _RIGHT:
            t = torch.nn.functional.pad(t, (0, R - t.shape[1]), value=fill)
        out[f.name] = t
    return out


def gather_rollout(exp: Experience, texts: list[str], *, k: int, pad_id: int) -> tuple[Experience, list[str]]:
    """(The whole rollout, its response texts) in every process, from each process's share.

    ``exp`` holds this process's prompts ``index[r::W]``, ``k`` rows each; the result holds the
    step's prompts in order, each prompt's rows where one process would have them.
    """
    W = distributed.world_size()
    widths = distributed.all_gather_object((exp.prompt_width, exp.response_ids.shape[1]))
    P, R = max(p for p, _ in widths), max(r for _, r in widths)
    mine = _widen(exp, P, R, pad_id)
    n_rows = [len(part) for part in distributed.all_gather_rows(torch.zeros(len(exp), 1))]
    # rows of the whole rollout, in order: prompt j is process j % W's prompt j // W
    n_prompts = sum(n_rows) // k
    order = [(j % W, (j // W) * k + i) for j in range(n_prompts) for i in range(k)]
    fields = {}
    for name, t in mine.items():
        dtype = t.dtype
        parts = distributed.all_gather_rows(t.long() if dtype == torch.bool else t)
        fields[name] = torch.stack([parts[p][row] for p, row in order]).to(dtype)
    lists = distributed.all_gather_object((exp.prompt_texts, texts))
    fields["prompt_texts"] = [lists[p][0][row] for p, row in order] if exp.prompt_texts is not None else None
    all_texts = [lists[p][1][row] for p, row in order]
    return dataclasses.replace(exp, **fields), all_texts


def split_policy_forward(models, mb: Experience, *, temperature: float, with_values: bool):
    """:func:`~alignlab.rollout.passes.policy_forward` on the whole minibatch ``mb``, computed in parts:
    this process's rows ``r::W`` with gradient, the others' gathered (detached).

    Returns (log-probs ``(B, R)``, values ``(B, R)`` or None, None: hidden states stay local).
    A process with no row of ``mb`` computes row 0 and adds it times 0, so that its backward still
    reaches every parameter (DDP waits for each one's gradient).
    """
    W, r = distributed.world_size(), distributed.rank()
    mine = torch.arange(r, len(mb), W)
    local = mine if len(mine) else torch.zeros(1, dtype=torch.long)
    logprobs, values, _ = policy_forward(models, mb.select(local), temperature=temperature, with_values=with_values)

    def assemble(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        parts = distributed.all_gather_rows(t if len(mine) else t[:0])
        full = torch.zeros((len(mb), *t.shape[1:]), dtype=t.dtype, device=t.device)
        for p, part in enumerate(parts):
            full[p::W] = part.to(full.device)
        if not len(mine):
            return full + 0.0 * t.sum()
        return full.index_put((mine.to(t.device),), t)  # this process's rows carry the graph

    return assemble(logprobs), assemble(values), None
