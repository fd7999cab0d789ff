"""Direct preference losses (the DPO family) as pure functions of sequence log-probabilities.

Every paired loss takes ``seq_logps`` of shape ``(B,)`` — the **sum** of per-token log-probs over
the response tokens — for the chosen response y_w and the rejected response y_l, and returns
``(loss, stats)``. The loss is a **per-sequence** mean: each preference pair (or, for KTO, each
unpaired example) weighs the same, whatever its length.

Notation used in the docstrings::

    ρ_w = log π_θ(y_w|x) - log π_ref(y_w|x)        (chosen log-ratio, per sequence)
    ρ_l = log π_θ(y_l|x) - log π_ref(y_l|x)        (rejected log-ratio)
    h   = ρ_w - ρ_l                                (the preference log-ratio)
    ℓ(z) = -log σ(z)                               (computed as -logsigmoid(z): finite for |z|=1e4)

Hyperparameters:

* ``beta`` β > 0 — temperature of the implicit reward β·log(π_θ/π_ref); small β lets the policy
  move further from the reference. Typical 0.1 for DPO; 2.0–2.5 for SimPO.
* ``label_smoothing`` ε — assumed probability that a preference label is flipped (cDPO, robust).
* ``gamma`` γ — SimPO's target reward margin (typically 0.5–1.5).
* ``orpo_lambda`` λ — weight of ORPO's odds-ratio term next to the NLL (default 0.1).

Stats (detached scalar tensors; the same keys wherever they apply):

* ``rewards/chosen``, ``rewards/rejected`` — mean implicit reward β·ρ (β·mean log-prob for the
  reference-free losses), ``rewards/margin`` — mean of chosen minus rejected,
* ``rewards/accuracy`` — fraction of pairs with chosen reward > rejected reward; **a tie counts
  1/2**, so a policy equal to its reference reads 0.5 (chance), not 0,
* ``logps/chosen``, ``logps/rejected`` — mean policy ``seq_logps`` (summed over tokens),
* ``kl`` — per-sequence estimate of KL(π_θ‖π_ref): the mean of ρ over chosen and rejected
  responses (summed over tokens, also under ``length_normalize``); absent for reference-free
  losses.

Variants are data: :data:`PREFERENCE_LOSSES` maps a name to a :class:`PreferenceLoss` record and
:func:`preference_loss` dispatches on it. KTO is unpaired and is called directly via :func:`kto`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError, NumericalError

Stats = dict[str, torch.Tensor]

# Largest mean log-prob ORPO lets through: log odds need log(1 - p) with p = exp(avg_logp) < 1.
_ORPO_MAX_AVG_LOGP = -1e-6


# ----------------------------------------------------------------------------- helpers


def _check_same_shape(**tensors: torch.Tensor | None) -> None:
    """All given tensors must be 1-D with one shape; a silent (B,1) vs (B,) broadcast is a bug."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"preference inputs must all have the same shape (B,); got {shapes}")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 (the implicit-reward temperature); got {beta}")


def _pairwise_accuracy(margins: torch.Tensor) -> torch.Tensor:
    """Fraction of ``margins > 0``, a tie (margin == 0) counting 1/2. ``(B,) -> ()``."""
    return ((margins > 0).to(margins.dtype) + 0.5 * (margins == 0).to(margins.dtype)).mean()


def _reward_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Stats:
    margins = chosen_rewards - rejected_rewards  # (B,)
    return {
        "rewards/chosen": chosen_rewards.mean().detach(),
        "rewards/rejected": rejected_rewards.mean().detach(),
        "rewards/margin": margins.mean().detach(),
        "rewards/accuracy": _pairwise_accuracy(margins.detach()),
    }


def _logp_stats(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> Stats:
    return {
        "logps/chosen": chosen_logps.mean().detach(),
        "logps/rejected": rejected_logps.mean().detach(),
    }


def _kl_stat(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor) -> Stats:
    # mean over the 2B responses of log π_θ - log π_ref (per sequence)
    return {"kl": (0.5 * (chosen_logratios.mean() + rejected_logratios.mean())).detach()}


def _reference_terms(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, Stats]:
    """``h = ρ_w - ρ_l`` of shape (B,) and the stats every reference-based loss reports."""
    _check_same_shape(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    _check_beta(beta)
    chosen_logratios = chosen_logps - ref_chosen_logps  # (B,) ρ_w
    rejected_logratios = rejected_logps - ref_rejected_logps  # (B,) ρ_l
    h = chosen_logratios - rejected_logratios  # (B,)
    stats = _reward_stats(beta * chosen_logratios, beta * rejected_logratios)
    stats.update(_logp_stats(chosen_logps, rejected_logps))
    stats.update(_kl_stat(chosen_logratios, rejected_logratios))
    return h, stats


def length_normalize_logps(seq_logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean per-token log-prob of each sequence: ``seq_logps / lengths``, ``(B,) -> (B,)``.

    ``lengths`` is the number of response tokens (float or int); a length ≤ 0 means an empty
    response and raises :class:`NumericalError` instead of dividing by zero.
    """
    if bool((lengths <= 0).any()):
        raise NumericalError(
            "a response has length 0 (no response tokens); check that responses are not "
            "empty after truncation"
        )
    return seq_logps / lengths.to(seq_logps.dtype)


# ----------------------------------------------------------------------------- paired losses


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
    h, stats = _reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
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
    _check_smoothing(label_smoothing, upper=0.5, inclusive=True)
    h, stats = _reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
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
    _check_smoothing(label_smoothing, upper=0.5, inclusive=False)
    h, stats = _reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
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

    Which h: as in the paper, h here uses whatever log-likelihoods it is given — by default
    **summed** ``seq_logps`` (the paper's sequence log-likelihood ratios). With responses of
    hundreds of tokens h is on a much larger scale than the target 1/(2β); pass
    ``length_normalize=True`` to :func:`preference_loss` to use per-token mean log-probs instead
    (common practice). Per-sequence mean.
    """
    h, stats = _reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
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
    h, stats = _reference_terms(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    losses = torch.relu(1.0 - beta * h)  # (B,)
    return losses.mean(), stats


def simpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, Stats]:
    """Simple Preference Optimization, reference-free (Meng, Xia & Chen, 2024, arXiv:2405.14734).

        L = mean_B  -log σ(β/|y_w|·log π_θ(y_w|x) - β/|y_l|·log π_θ(y_l|x) - γ)

    The implicit reward is β times the mean per-token log-prob; γ ≥ 0 is a target reward margin.
    ``|y|`` are the response lengths in tokens. Stats report rewards β·log π_θ(y)/|y| and no "kl".
    Per-sequence mean.
    """
    _check_same_shape(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    _check_beta(beta)
    chosen_rewards = beta * length_normalize_logps(chosen_logps, chosen_lengths)  # (B,)
    rejected_rewards = beta * length_normalize_logps(rejected_logps, rejected_lengths)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)  # (B,)
    stats = _reward_stats(chosen_rewards, rejected_rewards)
    stats.update(_logp_stats(chosen_logps, rejected_logps))
    return losses.mean(), stats


def log_odds(avg_logps: torch.Tensor) -> torch.Tensor:
    """log(p / (1-p)) for p = exp(avg_logps), computed stably. ``(B,) -> (B,)``.

    ``log(1-p)`` is ``log(-expm1(a))`` near a = 0 and ``log1p(-exp(a))`` for a < -log 2 (the two
    accurate regimes of log(1 - e^a)). ``a`` is clamped to ≤ -1e-6 first, so p = 1 (a fully
    confident sequence, or a rounding error above 0) gives a large finite value, not inf.
    """
    a = avg_logps.clamp(max=_ORPO_MAX_AVG_LOGP)
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
    chosen_nll: torch.Tensor,
    *,
    orpo_lambda: float,
) -> tuple[torch.Tensor, Stats]:
    """Odds-Ratio Preference Optimization, reference-free (Hong, Lee & Thorne, 2024,
    arXiv:2403.07691).

        P(y)     = exp(log π_θ(y|x) / |y|)                  (mean per-token log-prob, as a prob)
        odds(y)  = P(y) / (1 - P(y))
        L        = NLL(y_w) + λ · mean_B  -log σ(log odds(y_w) - log odds(y_l))

    ``chosen_nll`` is the SFT term on the chosen response, a per-token mean NLL (a scalar, or a
    (B,) tensor that is averaged per sequence); the caller computes it, e.g.
    ``-(chosen_logps / chosen_lengths)``. Log odds are computed stably by :func:`log_odds` and
    stay finite as the mean log-prob → 0. Rewards in the stats are λ·(mean per-token log-prob).
    Extra stats: ``nll`` and ``orpo/log_odds_ratio``. The odds-ratio term is a per-sequence mean.
    """
    _check_same_shape(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    chosen_avg = length_normalize_logps(chosen_logps, chosen_lengths)  # (B,)
    rejected_avg = length_normalize_logps(rejected_logps, rejected_lengths)  # (B,)
    log_odds_ratio = log_odds(chosen_avg) - log_odds(rejected_avg)  # (B,)
    odds_ratio_loss = -F.logsigmoid(log_odds_ratio).mean()
    nll = chosen_nll.mean()  # scalar stays itself; (B,) -> per-sequence mean
    loss = nll + orpo_lambda * odds_ratio_loss
    stats = _reward_stats(orpo_lambda * chosen_avg, orpo_lambda * rejected_avg)
    stats.update(_logp_stats(chosen_logps, rejected_logps))
    stats["nll"] = nll.detach()
    stats["orpo/log_odds_ratio"] = log_odds_ratio.mean().detach()
    return loss, stats


# ----------------------------------------------------------------------------- KTO (unpaired)


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
    ``count/undesirable``), ``rewards/margin`` their difference, ``logps/*`` likewise, ``kl`` the
    mean r over the batch, ``kto/kl_ref_point`` z0. No accuracy: the examples are unpaired.
    """
    _check_same_shape(logps=logps, ref_logps=ref_logps, desirable=desirable)
    _check_beta(beta)
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
        "kl": logratios.mean().detach(),
        "kto/kl_ref_point": z0,
        "count/desirable": n_d,
        "count/undesirable": n_u,
    }
    return losses.mean(), stats


# ----------------------------------------------------------------------------- registry


def _check_smoothing(eps: float, *, upper: float, inclusive: bool) -> None:
    ok = 0 <= eps <= upper if inclusive else 0 <= eps < upper
    if not ok:
        bound = "]" if inclusive else ")"
        raise ConfigError(f"label_smoothing must be in [0, {upper}{bound}; got {eps}")


@dataclass(frozen=True)
class PreferenceLoss:
    """What a preference loss needs, so trainers and configs can ask without calling it."""

    fn: Callable[..., tuple[torch.Tensor, Stats]]
    """The pure loss function."""
    needs_reference: bool
    """Takes reference-model ``seq_logps`` (a frozen π_ref must be kept)."""
    paired: bool
    """Takes (chosen, rejected) pairs; False for KTO, which takes unpaired labelled examples."""
    needs_lengths: bool = False
    """Takes response lengths itself (reference-free losses, which are always length-normalised)."""
    needs_nll: bool = False
    """Takes ``chosen_nll``, the per-token NLL of the chosen response (ORPO)."""
    hyperparameters: tuple[str, ...] = ("beta",)
    """Keyword hyperparameters the function takes, by their names in :func:`preference_loss`."""


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": PreferenceLoss(dpo, needs_reference=True, paired=True),
    "cdpo": PreferenceLoss(cdpo, needs_reference=True, paired=True, hyperparameters=("beta", "label_smoothing")),
    "ipo": PreferenceLoss(ipo, needs_reference=True, paired=True),
    "hinge": PreferenceLoss(hinge, needs_reference=True, paired=True),
    "robust": PreferenceLoss(robust, needs_reference=True, paired=True, hyperparameters=("beta", "label_smoothing")),
    "kto": PreferenceLoss(
        kto, needs_reference=True, paired=False, hyperparameters=("beta", "desirable_weight", "undesirable_weight")
    ),
    "orpo": PreferenceLoss(
        orpo, needs_reference=False, paired=True, needs_lengths=True, needs_nll=True, hyperparameters=("orpo_lambda",)
    ),
    "simpo": PreferenceLoss(
        simpo, needs_reference=False, paired=True, needs_lengths=True, hyperparameters=("beta", "gamma")
    ),
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The registry entry for ``name``; an unknown name raises ConfigError naming the closest one."""
    spec = PREFERENCE_LOSSES.get(name)
    if spec is None:
        close = difflib.get_close_matches(str(name), list(PREFERENCE_LOSSES), n=1, cutoff=0.0)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown preference loss '{name}'{hint} (valid: {', '.join(sorted(PREFERENCE_LOSSES))})"
        )
    return spec


def preference_loss(
    name: str,
    *,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    chosen_nll: torch.Tensor | None = None,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
    orpo_lambda: float = 0.1,
    length_normalize: bool = False,
) -> tuple[torch.Tensor, Stats]:
    """Compute the paired preference loss ``name`` from :data:`PREFERENCE_LOSSES`.

    Each loss receives only the inputs and hyperparameters its registry entry lists. Inputs are
    ``seq_logps`` (summed over response tokens), shape (B,); lengths are response token counts.

    ``length_normalize`` (reference-based losses): divide every policy and reference
    ``seq_logps`` by its response length before h is formed, i.e. use mean per-token log-probs.
    Stats ``logps/*`` and ``kl`` still report the summed, per-sequence values. The
    reference-free losses (simpo, orpo) are always length-normalised; the flag changes nothing.

    ``label_smoothing`` is used only by cdpo and robust; a non-zero value with another loss is a
    ConfigError (rather than silently training without it). ``gamma`` is used only by simpo,
    ``orpo_lambda`` only by orpo.

    Raises ConfigError for an unknown name (naming the closest valid one), for "kto" (unpaired:
    call :func:`kto`), and when an input the loss needs is missing.
    """
    spec = get_preference_loss(name)
    if not spec.paired:
        raise ConfigError(
            f"preference loss '{name}' is unpaired (desirable/undesirable examples, not chosen/rejected "
            f"pairs); call alignlab.losses.preference.{spec.fn.__name__}(...) directly"
        )
    if label_smoothing != 0.0 and "label_smoothing" not in spec.hyperparameters:
        users = sorted(k for k, s in PREFERENCE_LOSSES.items() if "label_smoothing" in s.hyperparameters)
        raise ConfigError(
            f"label_smoothing={label_smoothing} has no effect with loss '{name}'; "
            f"use one of {users} or set label_smoothing to 0"
        )

    def require(field: str, value: torch.Tensor | None, why: str) -> torch.Tensor:
        if value is None:
            raise ConfigError(f"preference loss '{name}' needs {field} ({why}), but it was not given")
        return value

    inputs: dict[str, torch.Tensor] = {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps}
    if spec.needs_reference:
        why = "reference-model seq_logps; keep a frozen reference model or pick simpo/orpo"
        inputs["ref_chosen_logps"] = require("ref_chosen_logps", ref_chosen_logps, why)
        inputs["ref_rejected_logps"] = require("ref_rejected_logps", ref_rejected_logps, why)
    if spec.needs_lengths or (length_normalize and spec.needs_reference):
        why = "response token counts"
        chosen_lengths = require("chosen_lengths", chosen_lengths, why)
        rejected_lengths = require("rejected_lengths", rejected_lengths, why)
    if spec.needs_lengths:
        inputs["chosen_lengths"] = chosen_lengths
        inputs["rejected_lengths"] = rejected_lengths
    if spec.needs_nll:
        inputs["chosen_nll"] = require("chosen_nll", chosen_nll, "per-token NLL of the chosen response")

    summed = dict(inputs)
    if length_normalize and spec.needs_reference:
        for side, lengths in (("chosen", chosen_lengths), ("rejected", rejected_lengths)):
            for key in (f"{side}_logps", f"ref_{side}_logps"):
                inputs[key] = length_normalize_logps(inputs[key], lengths)

    hyper = {"beta": beta, "label_smoothing": label_smoothing, "gamma": gamma, "orpo_lambda": orpo_lambda}
    loss, stats = spec.fn(**inputs, **{k: hyper[k] for k in spec.hyperparameters})

    if length_normalize and spec.needs_reference:
        # report the summed, per-sequence log-probs and KL whatever h was built from
        stats.update(_logp_stats(summed["chosen_logps"], summed["rejected_logps"]))
        stats.update(
            _kl_stat(
                summed["chosen_logps"] - summed["ref_chosen_logps"],
                summed["rejected_logps"] - summed["ref_rejected_logps"],
            )
        )
    return loss, stats
