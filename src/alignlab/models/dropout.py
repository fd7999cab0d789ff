"""Dropout that draws only the positions it drops: the gaps between them are geometric.

Dropout zeroes each of the ``n`` elements independently with probability ``p`` and scales the
rest by ``1/(1-p)``. Read along the flattened tensor, the gaps between zeroed positions of such a
sequence are independent Geometric(p) variables on {1, 2, …}, and the first zero sits at one
gap minus one. So drawing about ``p·n`` gaps gives a mask with exactly the same law as ``n``
Bernoulli draws:

    G = ⌊log(1 − U) / log(1 − p)⌋ + 1,   U ~ Uniform[0, 1)       (P(G > k) = (1 − p)^k)
    zeroed positions = cumsum(G) − 1 (those below n)

torch's CPU generator draws about 300 M numbers per second on the machines we measured, so
``nn.Dropout(0.05)`` on LoRA's adapter inputs (seven per decoder layer) spent about a fifth of a
SmolLM2-135M LoRA SFT step in ``bernoulli_``. With p = 0.05 this draws 20× fewer numbers; it saves
the zeroed positions (int64, p·n of them) for backward instead of a float mask of n.

The draws come from torch's default generator, so ``torch.manual_seed`` and the saved RNG state
(exact resume) govern them; a recomputed forward (activation checkpointing replays the RNG state)
drops the same positions. The sampled masks differ from ``nn.Dropout``'s for the same seed: the
law is the same, the stream of draws is not.

It runs where it pays: on a CPU with ``p ≤ 0.5``. Elsewhere (a GPU's generator is fast; large p
draws nearly n gaps) it is ``nn.functional.dropout``.
"""

from __future__ import annotations

import math

import torch

GAP_MAX_P = 0.5  # above this the gaps are nearly as many as the elements


def dropped_positions(n: int, p: float, device=None, *, rounds: int | None = None) -> torch.Tensor:
    """Sorted flat indices in [0, n) that Bernoulli(p) dropout zeroes, drawn as geometric gaps.

    ``rounds``: gaps drawn at a time (default: six standard deviations more than the expected p·n
    zeros, so one round almost always reaches n); further rounds continue from the last zero.
    """
    if n == 0 or p <= 0.0:
        return torch.empty(0, dtype=torch.long, device=device)
    inv_log_keep = 1.0 / math.log1p(-p)
    draws = rounds or int(n * p + 6.0 * math.sqrt(n * p * (1.0 - p)) + 16)
    parts, start = [], 0
    while True:
        u = torch.rand(draws, dtype=torch.float64, device=device)
        gaps = torch.log1p(u.neg_()).mul_(inv_log_keep).floor_().long().add_(1)  # (draws,) Geometric(p)
        pos = gaps.cumsum_(0).add_(start - 1)  # (draws,) zeroed positions, increasing
        last = int(pos[-1])
        if last >= n:
            parts.append(pos[: int(torch.searchsorted(pos, n))])
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        parts.append(pos)
        start = last + 1


class _GapDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p):
        scale = 1.0 / (1.0 - p)
        out = x.contiguous() * scale
        pos = dropped_positions(out.numel(), p, out.device)
        out.view(-1).index_fill_(0, pos, 0.0)
        ctx.save_for_backward(pos)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        grad_x = grad.contiguous() * ctx.scale  # the same zeros and scale as the forward
        grad_x.view(-1).index_fill_(0, pos, 0.0)
        return grad_x, None


def gap_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``nn.functional.dropout(x, p, training)`` in law, drawing only the dropped positions on a CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p > GAP_MAX_P:
        return torch.nn.functional.dropout(x, p, training)
    return _GapDropout.apply(x, p)


class GapDropout(torch.nn.Dropout):
    """``nn.Dropout`` with :func:`gap_dropout`'s sampling.

    A subclass so that everything that finds dropout by its type (``model.eval()``, alignlab's and
    TRL's ``disable_dropout``) finds this one too.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gap_dropout(x, self.p, self.training)


def use_gap_dropout(model) -> int:
    """Swap every plain ``nn.Dropout`` with p > 0 in ``model`` for a :class:`GapDropout`; returns how many."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Dropout and child.p > 0.0:
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        swapped = GapDropout(child.p, inplace=False)
        swapped.train(child.training)
        setattr(parent, name, swapped)
    return len(swaps)
