"""Supervised fine-tuning loss."""

from __future__ import annotations

import torch

from alignlab.losses.reduce import masked_mean


def sft_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Negative log-likelihood of the response tokens, **per-token** mean over the batch.

        L = − (1 / Σ_{b,t} m_{b,t}) · Σ_{b,t} m_{b,t} · log π_θ(y_{b,t} | x_b, y_{b,<t})

    ``logprobs`` (B, T-1) are next-token log-probs; ``loss_mask`` (B, T-1) is 1 on response tokens
    (prompt and padding are 0, the labels' −100). Equal to ``cross_entropy(..., ignore_index=-100)``.
    A batch with no response token raises NumericalError instead of returning 0 or NaN.
    """
    nll = masked_mean(-logprobs, loss_mask)
    return nll, {"loss": nll.detach(), "ppl": torch.exp(nll.detach().clamp(max=50)), "tokens": loss_mask.sum().detach()}
