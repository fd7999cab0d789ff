"""Reference-free preference losses: SimPO and ORPO, on the policy's own log-probs.

Inputs are policy ``seq_logps`` ``(B,)`` (summed over response tokens) of the chosen y_w and the
rejected y_l, and their response token counts ``(B,)``; no reference model is kept. Both losses
score a response by its **mean per-token** log-prob. Stats are those of
:mod:`alignlab.losses.pref_stats` without ``logratio/mean`` (there is no reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.losses.pref_stats import (
    check_beta,
    check_same_shape,
    logp_stats,
    reward_stats,
)
from alignlab.losses.reduce import length_normalize, pooled_token_mean
from alignlab.losses.registry import Stats

# Largest mean log-prob ORPO lets through: log odds need log(1 - p) with p = exp(avg_logp) < 1.
ORPO_MAX_AVG_LOGP = -1e-6


def simpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float,
    simpo_gamma: float,
) -> tuple[torch.Tensor, Stats]:
    """Simple Preference Optimization, reference-free (Meng, Xia & Chen, 2024, arXiv:2405.14734).

        L = mean_B  -log σ(β/|y_w|·log π_θ(y_w|x) - β/|y_l|·log π_θ(y_l|x) - γ)

    The implicit reward is β times the mean per-token log-prob; γ = ``simpo_gamma`` ≥ 0 is a
    target reward margin, in reward units (the SimPO repository sets it as ``gamma_beta_ratio``·β).
    ``|y|`` are the response lengths in tokens. Stats report rewards β·log π_θ(y)/|y|.
    Per-sequence mean.
    """
    check_same_shape(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    check_beta(beta)
    chosen_rewards = beta * length_normalize(chosen_logps, chosen_lengths)  # (B,)
    rejected_rewards = beta * length_normalize(rejected_logps, rejected_lengths)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - simpo_gamma)  # (B,)
    stats = reward_stats(chosen_rewards, rejected_rewards)
    stats.update(logp_stats(chosen_logps, rejected_logps))
    return losses.mean(), stats


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1-p)) for p = exp(avg_logps), computed stably. ``(B,) -> (B,)``.

    ``log(1-p)`` is ``log(-expm1(a))`` near a = 0 and ``log1p(-exp(a))`` for a < -log 2 (the two
    accurate regimes of log(1 - e^a)). ``a`` is clamped to ≤ -1e-6 first, so p = 1 (a fully
    confident sequence, or a rounding error above 0) gives a large finite value, not inf.
    """
    a = avg_logps.clamp(max=ORPO_MAX_AVG_LOGP)
    log1m_p = torch.where(
        a > -0.6931471805599453,  # -log 2
        torch.log(-torch.expm1(a)),
        torch.log1p(-torch.exp(a)),
    )
    return a - log1m_p


def orpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    orpo_lambda: float,
) -> tuple[torch.Tensor, Stats]:
    """Odds-Ratio Preference Optimization, reference-free (Hong, Lee & Thorne, 2024,
    arXiv:2403.07691).

        P(y)     = exp(log π_θ(y|x) / |y|)                  (mean per-token log-prob, as a prob)
        odds(y)  = P(y) / (1 - P(y))
        NLL      = -Σ_b log π_θ(y_w,b|x_b) / Σ_b |y_w,b|    (per token over all chosen tokens)
        L        = NLL + λ · mean_B  -log σ(log odds(y_w) - log odds(y_l))

    The NLL is the paper's L_SFT: the causal-LM loss of the chosen responses, a mean over every
    chosen token of the batch (a long response counts more), computed here from the chosen
    ``seq_logps`` and ``chosen_lengths``. The odds-ratio term is a per-sequence mean. λ =
    ``orpo_lambda`` (the paper's λ; TRL calls it ``beta``). Log odds are computed stably by
    :func:`log_odds` and stay finite as the mean log-prob → 0. Rewards in the stats are
    λ·(mean per-token log-prob). Extra stats: ``nll`` and ``orpo/log_odds_ratio``.
    """
    check_same_shape(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    chosen_avg = length_normalize(chosen_logps, chosen_lengths)  # (B,)
    rejected_avg = length_normalize(rejected_logps, rejected_lengths)  # (B,)
    log_odds_ratio = log_odds(chosen_avg) - log_odds(rejected_avg)  # (B,)
    odds_ratio_loss = -F.logsigmoid(log_odds_ratio).mean()  # per sequence
    nll = -pooled_token_mean(chosen_logps, chosen_lengths)  # () per token
    loss = nll + orpo_lambda * odds_ratio_loss
    stats = reward_stats(orpo_lambda * chosen_avg, orpo_lambda * rejected_avg)
    stats.update(logp_stats(chosen_logps, rejected_logps))
    stats["nll"] = nll.detach()
    stats["orpo/log_odds_ratio"] = log_odds_ratio.mean().detach()
    return loss, stats
