"""Losses: pure functions of tensors returning ``(loss, stats)``, each with its formula and paper.

    >>> from alignlab import losses
    >>> loss, stats = losses.dpo(pi_w, pi_l, ref_w, ref_l, beta=0.1)

One job per file: ``reference_based`` (dpo and its variants), ``reference_free`` (simpo, orpo),
``unpaired`` (kto), ``pref_stats`` (stats shared by every pairwise loss), ``preference`` (the
registry and dispatcher), ``reward`` (reward models), ``ppo`` (policy-gradient losses), ``kl``,
``advantages``, ``reduce`` (every mean over tokens), ``registry`` (lookup by name).

Variants are data: ``PREFERENCE_LOSSES`` (DPO family, with published defaults: ``loss_defaults``),
``REWARD_LOSSES``, ``POLICY_LOSSES`` (``policy_loss_defaults``), ``KL_ESTIMATORS``,
``GROUP_ADVANTAGES``; a config names an entry and is validated against the dict.
"""

from alignlab.losses.advantages import (
    GROUP_ADVANTAGES,
    best_of_n_kl,
    dapo_keep_groups,
    gae,
    grpo_advantages,
    overlong_penalty,
    reinforce_pp_advantages,
    rloo_advantages,
    whiten_advantages,
)
from alignlab.losses.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_loss_term,
    log_ratio,
    reward_with_kl,
)
from alignlab.losses.ppo import (
    GRPO_LOSS_TYPES,
    POLICY_LOSSES,
    dapo_loss,
    entropy_bonus,
    explained_variance,
    get_policy_loss,
    grpo_loss,
    gspo_loss,
    policy_loss_defaults,
    ppo_policy_loss,
    ppo_value_loss,
    reinforce_loss,
    rloo_loss,
)
from alignlab.losses.pref_stats import pairwise_accuracy
from alignlab.losses.preference import (
    PREFERENCE_LOSSES,
    cdpo,
    dpo,
    dpo_norm,
    get_preference_loss,
    hinge,
    ipo,
    kto,
    kto_kl_ref_point,
    loss_defaults,
    orpo,
    preference_loss,
    robust,
    rpo,
    simpo,
)
from alignlab.losses.reduce import length_normalize, masked_mean, masked_sum, pooled_token_mean, seq_mean, whiten
from alignlab.losses.registry import choose
from alignlab.losses.reward import (
    REWARD_LOSSES,
    bradley_terry,
    calibration,
    kwise_pairwise,
    plackett_luce,
    reward_centering_penalty,
    reward_magnitude_penalty,
)
from alignlab.losses.sft import sft_loss

__all__ = [
    "GROUP_ADVANTAGES", "GRPO_LOSS_TYPES", "KL_ESTIMATORS", "POLICY_LOSSES", "PREFERENCE_LOSSES", "REWARD_LOSSES",
    "AdaptiveKLController", "FixedKLController",
    "best_of_n_kl", "bradley_terry", "calibration", "cdpo", "choose", "dapo_keep_groups", "dapo_loss", "dpo",
    "dpo_norm", "entropy_bonus", "explained_variance", "gae", "get_policy_loss", "get_preference_loss",
    "grpo_advantages", "grpo_loss", "gspo_loss", "hinge", "ipo", "kl_estimate", "kl_loss_term", "kto",
    "kto_kl_ref_point", "kwise_pairwise", "length_normalize", "log_ratio", "loss_defaults", "masked_mean",
    "masked_sum", "orpo", "overlong_penalty", "pairwise_accuracy", "plackett_luce", "policy_loss_defaults",
    "pooled_token_mean", "ppo_policy_loss", "ppo_value_loss", "preference_loss", "reinforce_loss",
    "reinforce_pp_advantages", "reward_centering_penalty", "reward_magnitude_penalty", "reward_with_kl",
    "rloo_advantages", "rloo_loss", "robust", "rpo", "seq_mean", "sft_loss", "simpo", "whiten", "whiten_advantages",
]  # fmt: skip
