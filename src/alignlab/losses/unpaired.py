"""Kahneman–Tversky Optimization: a preference loss on **unpaired** labelled examples.

Inputs are ``seq_logps`` ``(B,)`` (summed over response tokens) of the policy and the frozen
reference for B examples, each labelled desirable or undesirable, and KTO's reference point z0.
"""

from __future__ import annotations

import torch

from alignlab.losses.pref_stats import check_beta, check_same_shape
from alignlab.losses.registry import Stats


def kto_kl_ref_point(logps_mismatched: torch.Tensor, ref_logps_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean_B [log π_θ(y'|x) - log π_ref(y'|x)]), detached.

    Estimated from *mismatched* pairs (x, y') — a response y' written for another prompt — as in
    Ethayarajh et al. (2024). It is a batch estimate of KL(π_θ‖π_ref), clamped at 0 (a KL is
    non-negative) and detached: KTO does not backpropagate through z0. ``(B,) -> ()``.
    """
    return (logps_mismatched - ref_logps_mismatched).mean().clamp(min=0).detach()


def kto(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_ref_point: torch.Tensor | float,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, Stats]:
    """Kahneman–Tversky Optimization on **unpaired** examples (Ethayarajh et al., 2024,
    arXiv:2402.01306).

        r      = log π_θ(y|x) - log π_ref(y|x)                       (B,)
        L(x,y) = λ_D · (1 - σ(β·(r - z0)))    if y is desirable
                 λ_U · (1 - σ(β·(z0 - r)))    if y is undesirable
        L      = mean_B L(x, y)                                      (per example)

    ``z0`` (``kl_ref_point``) is a detached scalar, usually :func:`kto_kl_ref_point`.
    ``desirable`` is a (B,) bool tensor. The paper recommends weights with
    λ_D·n_D / (λ_U·n_U) in [1, 4/3] when desirable and undesirable counts differ.

    Stats: ``rewards/chosen`` / ``rewards/rejected`` are mean β·r over desirable / undesirable
    examples (0 when a batch has none of that kind — see ``count/desirable`` and
    ``count/undesirable``), ``rewards/margin`` their difference, ``logps/*`` likewise, ``logratio/mean`` the mean r over the
    batch (not a KL: the examples are offline), ``kto/kl_ref_point`` z0. No accuracy: the
    examples are unpaired.
    """
    check_same_shape(logps=logps, ref_logps=ref_logps, desirable=desirable)
    check_beta(beta)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor; got dtype {desirable.dtype}")
    z0 = torch.as_tensor(kl_ref_point, dtype=logps.dtype, device=logps.device).detach()
    logratios = logps - ref_logps  # (B,) r
    # 1 - σ(z) = σ(-z), which keeps its precision when σ(z) is close to 1
    desirable_losses = desirable_weight * torch.sigmoid(-beta * (logratios - z0))  # (B,)
    undesirable_losses = undesirable_weight * torch.sigmoid(-beta * (z0 - logratios))  # (B,)
    losses = torch.where(desirable, desirable_losses, undesirable_losses)  # (B,)

    undesirable = ~desirable
    n_d = desirable.sum().to(logps.dtype)
    n_u = undesirable.sum().to(logps.dtype)
    rewards = (beta * logratios).detach()

    def mean_over(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, values, torch.zeros_like(values)).sum() / count.clamp(min=1)

    chosen_rewards = mean_over(rewards, desirable, n_d)
    rejected_rewards = mean_over(rewards, undesirable, n_u)
    stats: Stats = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margin": chosen_rewards - rejected_rewards,
        "logps/chosen": mean_over(logps.detach(), desirable, n_d),
        "logps/rejected": mean_over(logps.detach(), undesirable, n_u),
        "logratio/mean": logratios.mean().detach(),
        "kto/kl_ref_point": z0,
        "count/desirable": n_d,
        "count/undesirable": n_u,
    }
    return losses.mean(), stats
