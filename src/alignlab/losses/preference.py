"""The preference-loss registry: :data:`PREFERENCE_LOSSES`, its published defaults, and the dispatcher.

The losses themselves live by kind — reference-based in :mod:`alignlab.losses.reference_based`,
reference-free in :mod:`alignlab.losses.reference_free`, unpaired in :mod:`alignlab.losses.unpaired`,
shared stats in :mod:`alignlab.losses.pref_stats` — and are re-exported here, so
``from alignlab.losses.preference import dpo, kto`` keeps working.

Variants are data: a row of :data:`PREFERENCE_LOSSES` says which tensors a loss takes, which
hyperparameters, and their **published defaults** (:func:`loss_defaults`), so a config can
validate a name, set per-loss defaults and print them in ``--help`` without calling anything.
:func:`preference_loss` dispatches a paired loss by name; KTO is unpaired and called directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignlab.errors import ConfigError
from alignlab.losses.reference_based import (
    cdpo,
    dpo,
    dpo_norm,
    hinge,
    ipo,
    on_mean_logps,
    robust,
    rpo,
)
from alignlab.losses.reference_free import log_odds, orpo, simpo
from alignlab.losses.registry import Stats, choose
from alignlab.losses.unpaired import kto, kto_kl_ref_point

__all__ = [
    "PREFERENCE_LOSSES",
    "PreferenceLoss",
    "cdpo",
    "dpo",
    "dpo_norm",
    "get_preference_loss",
    "hinge",
    "ipo",
    "kto",
    "kto_kl_ref_point",
    "log_odds",
    "loss_defaults",
    "orpo",
    "preference_loss",
    "robust",
    "rpo",
    "simpo",
]

_REF = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
_LENGTHS = ("chosen_lengths", "rejected_lengths")


@dataclass(frozen=True)
class PreferenceLoss:
    """One registry row: what a preference loss takes, so trainers and configs can ask without calling it."""

    fn: Callable[..., tuple[torch.Tensor, Stats]]
    """The pure loss function."""
    inputs: tuple[str, ...]
    """The tensors it takes, by keyword: seq_logps ``(B,)`` (summed over response tokens), response
    lengths ``(B,)``; for KTO the unpaired examples."""
    hyperparameters: tuple[str, ...]
    """Keyword hyperparameters it takes, by their names in :func:`preference_loss`."""
    defaults: dict[str, float | bool] = field(default_factory=dict)
    """Published defaults of the hyperparameters (and of ``length_normalize`` where it is not False)."""
    paired: bool = True
    """Takes (chosen, rejected) pairs; False for KTO, which takes unpaired labelled examples."""

    @property
    def needs_reference(self) -> bool:
        """Takes reference-model ``seq_logps`` (a frozen π_ref must be kept)."""
        return "ref_chosen_logps" in self.inputs or "ref_logps" in self.inputs

    @property
    def needs_lengths(self) -> bool:
        """Takes response lengths itself (it normalises by length on its own)."""
        return "chosen_lengths" in self.inputs

    @property
    def needs_nll(self) -> bool:
        """Always False: ORPO and RPO compute their token-level NLL from ``chosen_logps`` and
        ``chosen_lengths``. Kept so callers that still read it do not break; do not use."""
        return "chosen_nll" in self.inputs

    @property
    def supports_length_normalize(self) -> bool:
        """``length_normalize`` applies: a paired reference-based loss that does not take lengths."""
        return self.paired and self.needs_reference and not self.needs_lengths


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    # Rafailov et al. 2023: β = 0.1 in most experiments
    "dpo": PreferenceLoss(dpo, _REF, ("beta",), {"beta": 0.1}),
    # ε is the data's assumed flip rate; 0.1 as a start (Mitchell 2023 leaves it to the data)
    "cdpo": PreferenceLoss(cdpo, _REF, ("beta", "label_smoothing"), {"beta": 0.1, "label_smoothing": 0.1}),
    # Chowdhury et al. 2024: ε should match the flip rate (their experiments use 0.1–0.4)
    "robust": PreferenceLoss(robust, _REF, ("beta", "label_smoothing"), {"beta": 0.1, "label_smoothing": 0.1}),
    # Azar et al. 2023; β = 0.1 on length-averaged log-probs, the authors' and TRL's form
    "ipo": PreferenceLoss(ipo, _REF, ("beta",), {"beta": 0.1, "length_normalize": True}),
    # SLiC-HF's margin 1 on β·h; β = 0.1 as for DPO
    "hinge": PreferenceLoss(hinge, _REF, ("beta",), {"beta": 0.1}),
    # Tülu 3 (Lambert et al. 2024): length-normalised DPO with β = 5
    "dpo_norm": PreferenceLoss(dpo_norm, _REF + _LENGTHS, ("beta",), {"beta": 5.0}),
    # Pang et al. 2024 (iterative RPO): β = 0.1, NLL weight α = 1
    "rpo": PreferenceLoss(
        rpo,
        _REF + ("chosen_lengths",),
        ("beta", "rpo_alpha"),
        {"beta": 0.1, "rpo_alpha": 1.0},
    ),
    # Ethayarajh et al. 2024: β = 0.1, λ_D = λ_U = 1 for balanced data
    "kto": PreferenceLoss(
        kto,
        ("logps", "ref_logps", "desirable", "kl_ref_point"),
        ("beta", "desirable_weight", "undesirable_weight"),
        {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
        paired=False,
    ),
    # Hong et al. 2024: λ = 0.1
    "orpo": PreferenceLoss(
        orpo,
        ("chosen_logps", "rejected_logps") + _LENGTHS,
        ("orpo_lambda",),
        {"orpo_lambda": 0.1},
    ),
    # Meng et al. 2024: β 2.0–2.5 with γ/β ≈ 0.5 in the SimPO repository's configs; β = 2, γ = 1
    "simpo": PreferenceLoss(
        simpo,
        ("chosen_logps", "rejected_logps") + _LENGTHS,
        ("beta", "simpo_gamma"),
        {"beta": 2.0, "simpo_gamma": 1.0},
    ),
}


def get_preference_loss(name: str) -> PreferenceLoss:
    """The registry row for ``name``; an unknown name raises ConfigError naming the closest one."""
    return choose(PREFERENCE_LOSSES, name, "preference loss")


def loss_defaults(name: str) -> dict[str, float | bool]:
    """The published defaults of loss ``name`` (a copy), e.g. ``{"beta": 0.1}`` for dpo."""
    return dict(get_preference_loss(name).defaults)


def preference_loss(
    name: str,
    *,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    beta: float | None = None,
    label_smoothing: float | None = None,
    simpo_gamma: float | None = None,
    orpo_lambda: float | None = None,
    rpo_alpha: float | None = None,
    length_normalize: bool | None = None,
    gamma: float | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Compute the paired preference loss ``name`` from :data:`PREFERENCE_LOSSES`.

    Each loss receives only the inputs and hyperparameters its row lists. Inputs are
    ``seq_logps`` (summed over response tokens), shape (B,); lengths are response token counts.
    A hyperparameter left ``None`` takes the row's published default (:func:`loss_defaults`).

    ``length_normalize`` (reference-based losses that do not take lengths: dpo, cdpo, robust,
    ipo, hinge): divide every policy and reference ``seq_logps`` by its response length before h
    is formed, i.e. use mean per-token log-probs. ``None`` is the row's default: **True for ipo**,
    False otherwise; ``False`` with ipo gives the summed form. Stats ``logps/*`` and
    ``logratio/mean`` stay summed per sequence. Losses that take lengths (dpo_norm, rpo, simpo,
    orpo) normalise on their own terms; True with them is a ConfigError.

    ``label_smoothing`` is used only by cdpo and robust; a non-zero value with another loss is a
    ConfigError (rather than silently training without it). ``simpo_gamma`` is used only by simpo,
    ``orpo_lambda`` only by orpo, ``rpo_alpha`` only by rpo. ``gamma`` is a transitional alias of
    ``simpo_gamma`` for callers not yet renamed (``gamma`` is the PPO discount in the glossary).

    Raises ConfigError for an unknown name (naming the closest valid one), for "kto" (unpaired:
    call :func:`kto`), and when an input the loss needs is missing.
    """
    spec = get_preference_loss(name)
    if not spec.paired:
        raise ConfigError(
            f"preference loss '{name}' is unpaired (desirable/undesirable examples, not chosen/rejected "
            f"pairs); call alignlab.losses.preference.{spec.fn.__name__}(...) directly"
        )
    if gamma is not None:
        if simpo_gamma is not None and simpo_gamma != gamma:
            raise ConfigError(
                f"simpo_gamma={simpo_gamma} and its old name gamma={gamma} disagree; pass simpo_gamma only"
            )
        simpo_gamma = gamma
    if label_smoothing not in (None, 0.0) and "label_smoothing" not in spec.hyperparameters:
        users = sorted(k for k, s in PREFERENCE_LOSSES.items() if "label_smoothing" in s.hyperparameters)
        raise ConfigError(
            f"label_smoothing={label_smoothing} has no effect with loss '{name}'; "
            f"use one of {users} or set label_smoothing to 0"
        )
    if length_normalize is None:
        length_normalize = bool(spec.defaults.get("length_normalize", False))
    if length_normalize and not spec.supports_length_normalize:
        raise ConfigError(
            f"length_normalize applies to reference-based losses that take no lengths; '{name}' uses "
            "response lengths on its own terms: leave length_normalize unset"
        )

    given = {
        "chosen_logps": chosen_logps,
        "rejected_logps": rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
    }
    needed = spec.inputs + (_LENGTHS if length_normalize else ())
    for key in needed:
        if given[key] is None:
            why = (
                "reference-model seq_logps; keep a frozen reference model or pick simpo/orpo"
                if key.startswith("ref_")
                else "response token counts"
            )
            raise ConfigError(f"preference loss '{name}' needs {key} ({why}), but it was not given")

    hyper_given = {
        "beta": beta,
        "label_smoothing": label_smoothing,
        "simpo_gamma": simpo_gamma,
        "orpo_lambda": orpo_lambda,
        "rpo_alpha": rpo_alpha,
    }
    hyper = {k: spec.defaults[k] if hyper_given[k] is None else hyper_given[k] for k in spec.hyperparameters}
    if length_normalize:
        return on_mean_logps(spec.fn, *(given[k] for k in _REF + _LENGTHS), **hyper)
    return spec.fn(**{k: given[k] for k in spec.inputs}, **hyper)
