"""Losses: pure functions of tensors returning ``(loss, stats)``, each with its formula and paper.

    >>> from alignlab import losses
    >>> loss, stats = losses.dpo(pi_w, pi_l, ref_w, ref_l, beta=0.1)

Variants are data: ``PREFERENCE_LOSSES`` (DPO family), ``REWARD_LOSSES`` (reward models),
``KL_ESTIMATORS``, ``GROUP_ADVANTAGES``; a config names an entry and is validated against the dict.
"""
from alignlab.losses.advantages import GROUP_ADVANTAGES, best_of_n_kl, gae, grpo_advantages, rloo_advantages, whiten_advantages
from alignlab.losses.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_estimate, reward_with_kl
from alignlab.losses.ppo import explained_variance, grpo_loss, ppo_policy_loss, ppo_value_loss, reinforce_loss
from alignlab.losses.preference import (
    PREFERENCE_LOSSES,
    cdpo,
    dpo,
    hinge,
    ipo,
    kto,
    kto_kl_ref_point,
    orpo,
    preference_loss,
    robust,
    simpo,
)
from alignlab.losses.reduce import masked_mean, masked_sum, seq_mean, whiten
from alignlab.losses.reward import REWARD_LOSSES, bradley_terry, calibration, kwise_pairwise, plackett_luce, reward_magnitude_penalty
from alignlab.losses.sft import sft_loss

__all__ = [
    "GROUP_ADVANTAGES", "KL_ESTIMATORS", "PREFERENCE_LOSSES", "REWARD_LOSSES",
    "AdaptiveKLController", "FixedKLController",
    "best_of_n_kl", "bradley_terry", "calibration", "cdpo", "dpo", "explained_variance", "gae",
    "grpo_advantages", "grpo_loss", "hinge", "ipo", "kl_estimate", "kto", "kto_kl_ref_point",
    "kwise_pairwise", "masked_mean", "masked_sum", "orpo", "plackett_luce", "ppo_policy_loss",
    "ppo_value_loss", "preference_loss", "reinforce_loss", "reward_magnitude_penalty",
    "reward_with_kl", "rloo_advantages", "robust", "seq_mean", "sft_loss", "simpo", "whiten",
    "whiten_advantages",
]
