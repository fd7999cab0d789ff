"""Reference-based preference losses (the DPO family) as pure functions of sequence log-probs.

Every loss takes ``seq_logps`` of shape ``(B,)`` — the **sum** of per-token log-probs over the
response tokens — of the policy and of the frozen reference, for the chosen response y_w and the
rejected y_l, and returns ``(loss, stats)``. The preference term is a **per-sequence** mean: each
pair weighs the same, whatever its length (RPO's NLL term is per token, see :func:`rpo`).

Notation used in the docstrings::

    ρ_w = log π_θ(y_w|x) - log π_ref(y_w|x)        (chosen log-ratio, per sequence)
    ρ_l = log π_θ(y_l|x) - log π_ref(y_l|x)        (rejected log-ratio)
    h   = ρ_w - ρ_l                                (the preference log-ratio)
    ℓ(z) = -log σ(z)                               (computed as -logsigmoid(z): finite for |z|=1e4)

Hyperparameters: ``beta`` β > 0, the temperature of the implicit reward β·log(π_θ/π_ref) (small β
lets the policy move further from the reference); ``label_smoothing`` ε, the assumed probability
that a label is flipped (cDPO, robust); ``rpo_alpha`` α, the weight of RPO's NLL term. Published
defaults are in the registry rows of :data:`alignlab.losses.preference.PREFERENCE_LOSSES`.

Stats: see :mod:`alignlab.losses.pref_stats` (``rewards/*`` are β·ρ, ``logps/*``,
``logratio/mean``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.losses.pref_stats import (
    check_beta,
    check_same_shape,
    logp_stats,
    logratio_stat,
    reward_stats,
)
from alignlab.losses.reduce import length_normalize, pooled_token_mean
from alignlab.losses.registry import Stats


def reference_terms(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """``h = ρ_w - ρ_l`` of shape (B,) and the stats every reference-based loss reports."""
    check_same_shape(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    check_beta(beta)
    chosen_logratios = chosen_logps - ref_chosen_logps  # (B,) ρ_w
    rejected_logratios = rejected_logps - ref_rejected_logps  # (B,) ρ_l
    h = chosen_logratios - rejected_logratios  # (B,)
    stats = reward_stats(beta * chosen_logratios, beta * rejected_logratios)
    stats.update(logp_stats(chosen_logps, rejected_logps))
    stats.update(logratio_stat(chosen_logratios, rejected_logratios))
    return h, stats


def check_smoothing(eps: float, *, upper: float, inclusive: bool) -> None:
    ok = 0 <= eps <= upper if inclusive else 0 <= eps < upper
    if not ok:
        bound = "]" if inclusive else ")"
        raise ConfigError(f"label_smoothing must be in [0, {upper}{bound}; got {eps}")


def dpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """Direct Preference Optimization, sigmoid loss (Rafailov et al., 2023, arXiv:2305.18290).

        L = mean_B  -log σ(β·h),    h = ρ_w - ρ_l

    The Bradley–Terry likelihood of the preference under the implicit reward β·log(π_θ/π_ref).
    Inputs are ``seq_logps`` of shape (B,); the mean is per sequence (per pair).
    """
    h, stats = reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    losses = -F.logsigmoid(beta * h)  # (B,)
    return losses.mean(), stats


def cdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, Stats]:
    """Conservative DPO: DPO with label smoothing ε (Mitchell, 2023, "A note on DPO with noisy
    preferences & relationship to IPO"; the cDPO variant discussed alongside Rafailov et al.).

        L = mean_B  (1-ε)·(-log σ(β·h)) + ε·(-log σ(-β·h)),    0 ≤ ε ≤ 1/2

    The cross-entropy against a soft label that says "chosen is preferred" with probability 1-ε;
    its minimum is at finite h (σ(βh) = 1-ε), so the policy stops pushing a pair apart.
    ε = 0 is exactly :func:`dpo`. Per-sequence mean.
    """
    check_smoothing(label_smoothing, upper=0.5, inclusive=True)
    h, stats = reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    eps = label_smoothing
    losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)  # (B,)
    return losses.mean(), stats


def robust(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> tuple[torch.Tensor, Stats]:
    """Provably robust DPO, rDPO (Chowdhury, Kini & Natarajan, 2024, arXiv:2403.00409).

        L = mean_B  [(1-ε)·(-log σ(β·h)) - ε·(-log σ(-β·h))] / (1 - 2ε),    0 ≤ ε < 1/2

    An unbiased estimate of the clean-label DPO loss when each label is flipped with known
    probability ε. Unlike cDPO it is not bounded below (for ε > 0 it decreases linearly as
    h → +∞), so it can be negative. ε = 0 is exactly :func:`dpo`. Per-sequence mean.
    """
    check_smoothing(label_smoothing, upper=0.5, inclusive=False)
    h, stats = reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)  # (B,)
    return losses.mean(), stats


def ipo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """Identity Preference Optimization (Azar et al., 2023, "A General Theoretical Paradigm to
    Understand Learning from Human Preferences", arXiv:2310.12036).

        L = mean_B  (h - 1/(2β))²

    β plays the role of the paper's regularisation τ. A squared loss regresses h to a finite
    target, so IPO does not drive h to infinity on deterministic preferences the way DPO can.

    Which h: this function uses the log-likelihoods it is given. Through
    :func:`alignlab.losses.preference.preference_loss` IPO defaults to **length-averaged**
    log-probs (``length_normalize=True``: mean per-token log π, as in the authors' experiments and
    TRL), which keeps h on the scale of the target 1/(2β); pass ``length_normalize=False`` for the
    summed sequence log-likelihoods of the paper's derivation (with long responses h then dwarfs
    the target). Per-sequence mean.
    """
    h, stats = reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    losses = (h - 1.0 / (2.0 * beta)) ** 2  # (B,)
    return losses.mean(), stats


def hinge(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """Hinge (SLiC) loss on the reference log-ratio (Zhao et al., 2023, "SLiC-HF",
    arXiv:2305.10425; in the reference-ratio form used by the DPO-family literature).

        L = mean_B  max(0, 1 - β·h)

    Zero once the implicit reward margin β·h reaches 1: pairs beyond the margin give no gradient.
    Per-sequence mean.
    """
    h, stats = reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    losses = torch.relu(1.0 - beta * h)  # (B,)
    return losses.mean(), stats


def on_mean_logps(
    fn,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    **hyperparameters: float,
) -> tuple[torch.Tensor, Stats]:
    """Call the reference-based loss ``fn`` on mean per-token log-probs (each policy and reference
    ``seq_logps`` divided by its response length), reporting ``logps/*`` and ``logratio/mean``
    still summed per sequence. ``rewards/*`` are β times the per-token log-ratios h is built from.
    """
    check_same_shape(
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        chosen_logps=chosen_logps,
    )
    loss, stats = fn(
        length_normalize(chosen_logps, chosen_lengths),
        length_normalize(rejected_logps, rejected_lengths),
        length_normalize(ref_chosen_logps, chosen_lengths),
        length_normalize(ref_rejected_logps, rejected_lengths),
        **hyperparameters,
    )
    stats.update(logp_stats(chosen_logps, rejected_logps))
    stats.update(logratio_stat(chosen_logps - ref_chosen_logps, rejected_logps - ref_rejected_logps))
    return loss, stats


def dpo_norm(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """Length-normalised DPO: :func:`dpo` on mean per-token log-probs (the ``dpo_norm`` of Tülu 3,
    Lambert et al., 2024, arXiv:2411.15124, trained with β = 5).

        h̄ = (log π_θ(y_w) - log π_ref(y_w)) / |y_w|  -  (log π_θ(y_l) - log π_ref(y_l)) / |y_l|
        L = mean_B  -log σ(β·h̄)

    Dividing by the length removes DPO's pull towards longer chosen responses; h̄ is ~|y| times
    smaller than h, hence the larger β. ``|y|`` are response token counts ``(B,)``.
    ``rewards/*`` are β times the per-token log-ratios; ``logps/*`` and ``logratio/mean`` stay
    summed per sequence. Per-sequence mean.
    """
    return on_mean_logps(
        dpo,
        chosen_logps,
        rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_lengths,
        rejected_lengths,
        beta=beta,
    )


def rpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    *,
    beta: float,
    rpo_alpha: float,
) -> tuple[torch.Tensor, Stats]:
    """DPO plus an NLL term on the chosen responses (Pang et al., 2024, "Iterative Reasoning
    Preference Optimization", arXiv:2404.19733; TRL's ``rpo_alpha``).

        NLL = -Σ_b log π_θ(y_w,b|x_b) / Σ_b |y_w,b|        (per token over the batch's chosen tokens)
        L   = mean_B -log σ(β·h)  +  α · NLL

    The NLL keeps the chosen responses likely, where DPO alone tends to lower the log-prob of
    both. It is the token-level SFT loss of the chosen responses (every chosen token weighs the
    same), computed from their ``seq_logps`` and token counts ``chosen_lengths`` ``(B,)``; the paper
    divides each sequence by its full length |x| + |y|, a per-sequence variant. Extra stat ``nll``.
    """
    loss, stats = dpo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    check_same_shape(chosen_logps=chosen_logps, chosen_lengths=chosen_lengths)
    nll = -pooled_token_mean(chosen_logps, chosen_lengths)  # ()
    stats["nll"] = nll.detach()
    return loss + rpo_alpha * nll, stats
