"""Reward-model losses and calibration, as pure functions of reward tensors.

A reward model gives one scalar per (prompt, response). Pairwise data gives ``chosen_rewards``
and ``rejected_rewards`` of shape (B,); ranked data gives ``rewards`` (B, K) with ``ranks``
(B, K), 1 = best, a permutation of 1..K in every row. Each loss returns ``(loss, stats)`` and
says what it averages over (per pair or per prompt).

Stats use the keys of the preference losses (:mod:`alignlab.losses.pref_stats`):
``rewards/accuracy`` (a tie counts 1/2), ``rewards/margin`` (mean r_better - r_worse),
``rewards/chosen``, ``rewards/rejected`` (for rankings: the better / worse response of each pair).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError, DataError, NumericalError
from alignlab.losses.pref_stats import pairwise_accuracy, reward_stats
from alignlab.losses.registry import Stats, choose


def bradley_terry(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Bradley–Terry pairwise loss (Bradley & Terry, 1952; as in Ouyang et al., 2022).

        L = mean_B  -log σ(r_w - r_l - m)

    ``margin`` m asks r_w to exceed r_l by at least about m: a float (the same for every pair), or
    a per-pair tensor (B,), e.g. from a preference-strength rating (Touvron et al., 2023, Llama 2,
    §3.2.2: a larger margin for "significantly better" pairs). The mean is per pair. Stats:
    ``rewards/accuracy``, ``rewards/margin`` (mean r_w - r_l, without m), ``rewards/chosen``,
    ``rewards/rejected``.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must both be (B,); got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    logits = chosen_rewards - rejected_rewards  # (B,)
    if isinstance(margin, (int, float)):
        logits = logits - float(margin)
    elif margin is not None:
        if margin.shape != logits.shape:
            raise ValueError(f"margin must be (B,) = {tuple(logits.shape)}; got {tuple(margin.shape)}")
        logits = logits - margin.to(logits.dtype)
    loss = -F.logsigmoid(logits).mean()
    return loss, reward_stats(chosen_rewards, rejected_rewards)


def _check_ranks(rewards: torch.Tensor, ranks: torch.Tensor) -> None:
    if rewards.dim() != 2 or ranks.shape != rewards.shape:
        raise ValueError(f"rewards and ranks must both be (B, K); got {tuple(rewards.shape)} and {tuple(ranks.shape)}")
    k = rewards.shape[1]
    if k < 2:
        raise DataError("", f"a ranking needs at least 2 responses per prompt; got K={k}", field="ranks")
    expected = torch.arange(1, k + 1, device=ranks.device)
    if not bool((ranks.sort(dim=-1).values == expected).all()):
        raise DataError("", f"every row of ranks must be a permutation of 1..{k} (1 = best)", field="ranks")


def kwise_pairwise(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """All-pairs Bradley–Terry loss for K ranked responses per prompt (Ouyang et al., 2022,
    "Training language models to follow instructions with human feedback", eq. 1).

        L = mean_B  1/C(K,2) · Σ_{i,j: rank_i < rank_j}  -log σ(r_i - r_j)

    InstructGPT puts all C(K,2) comparisons of one prompt in one batch element (so a prompt is
    not counted C(K,2) times per epoch and does not overfit); here each prompt's pairs are
    averaged, then prompts are averaged. Every prompt has the same K, so this equals the mean
    over all B·C(K,2) pairs. Vectorised over a (B, K, K) comparison grid.

    Stats are over the pairs: ``rewards/accuracy``, ``rewards/margin``, ``rewards/chosen`` (the better reward of
    each pair), ``rewards/rejected`` (the worse one).
    """
    _check_ranks(rewards, ranks)
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): r_i - r_j
    above = ranks[:, :, None] < ranks[:, None, :]  # (B, K, K): i ranked above j; one per pair
    pair_losses = -F.logsigmoid(diff[above])  # (B·C(K,2),) in row-major order, B-major
    loss = pair_losses.mean()
    better = rewards[:, :, None].expand_as(diff)[above]  # (B·C(K,2),)
    worse = rewards[:, None, :].expand_as(diff)[above]  # (B·C(K,2),)
    return loss, reward_stats(better, worse)


def plackett_luce(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Plackett–Luce listwise loss (Plackett, 1975; Luce, 1959; for reward models e.g.
    Zhu, Jordan & Jiao, 2023, arXiv:2301.11270).

    With σ the observed order (σ(1) the best response):

        L = mean_B  -Σ_{i=1..K} [ r_σ(i) - logsumexp_{j ≥ i} r_σ(j) ]

    the negative log-likelihood of picking the best remaining response, K times in a row
    (the i = K term is 0). For K = 2 it is exactly :func:`bradley_terry`. The mean is per prompt
    (a sum over the K choices of one prompt, not an average). Stats are the all-pairs stats of
    :func:`kwise_pairwise`.
    """
    _check_ranks(rewards, ranks)
    order = ranks.argsort(dim=-1)  # (B, K): column indices, best first
    ordered = rewards.gather(1, order)  # (B, K): r_σ(1), ..., r_σ(K)
    suffix_lse = ordered.flip(-1).logcumsumexp(-1).flip(-1)  # (B, K): logsumexp_{j≥i} r_σ(j)
    nll = -(ordered - suffix_lse).sum(-1)  # (B,)
    # pair stats: pairs (i<j) in the ordered list, i the better one
    k = rewards.shape[1]
    i, j = torch.triu_indices(k, k, offset=1, device=rewards.device)  # (C(K,2),) each
    better = ordered[:, i].reshape(-1)  # (B·C(K,2),)
    worse = ordered[:, j].reshape(-1)
    return nll.mean(), reward_stats(better, worse)


def reward_magnitude_penalty(rewards: torch.Tensor, coef: float) -> tuple[torch.Tensor, Stats]:
    """Penalty on reward magnitude, keeping rewards near 0:

        L = coef · mean(r²)        (mean over every element of ``rewards``)

    The Bradley–Terry loss only sees differences, so the rewards' offset drifts freely; this
    term pins it (and bounds the scale). :func:`reward_centering_penalty` is the pairwise form
    that pins only the common offset. Pass all rewards of the batch (e.g. chosen and rejected
    concatenated). Stats: ``rewards/mean_sq``.
    """
    mean_sq = (rewards**2).mean()
    return coef * mean_sq, {"rewards/mean_sq": mean_sq.detach()}


def reward_centering_penalty(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, coef: float
) -> tuple[torch.Tensor, Stats]:
    """Centring regulariser of a pairwise reward model:

        L = coef · mean_B (r_w + r_l)²        (per pair)

    Eisenstein et al. (2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not
    Eliminate Reward Hacking", arXiv:2312.09244), TRL's ``center_rewards_coefficient`` (0.01 is
    the value they suggest). The Bradley–Terry loss sees only r_w - r_l; this pulls each pair's
    mean reward to 0 without touching the difference, so rewards are comparable across prompts.
    ``chosen_rewards``, ``rejected_rewards`` ``(B,)``. Stats: ``rewards/centering`` (mean (r_w + r_l)²).
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must both be (B,); got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    centering = ((chosen_rewards + rejected_rewards) ** 2).mean()
    return coef * centering, {"rewards/centering": centering.detach()}


@dataclass(frozen=True)
class RewardLoss:
    """A reward-model loss and the data shape it takes."""

    fn: Callable[..., tuple[torch.Tensor, Stats]]
    """The pure loss function."""
    listwise: bool
    """Takes ``(rewards (B, K), ranks (B, K))``; False: ``(chosen_rewards (B,), rejected_rewards (B,))``."""


REWARD_LOSSES: dict[str, RewardLoss] = {
    "bradley_terry": RewardLoss(bradley_terry, listwise=False),
    "kwise": RewardLoss(kwise_pairwise, listwise=True),
    "plackett_luce": RewardLoss(plackett_luce, listwise=True),
}


def get_reward_loss(name: str) -> RewardLoss:
    """The registry entry for ``name``; an unknown name raises ConfigError naming the closest one."""
    return choose(REWARD_LOSSES, name, "reward loss")


@torch.no_grad()
def calibration(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, n_bins: int = 10
) -> dict[str, torch.Tensor]:
    """Calibration of the Bradley–Terry preference probability p = σ(r_w - r_l).

    Each pair is scored in both orientations — (p, outcome 1) for "chosen is preferred" and
    (1 - p, outcome 0) for "rejected is preferred" — so the result does not depend on which side
    was called chosen. Predictions go into ``n_bins`` equal-width bins on [0, 1]; the expected
    calibration error (Naeini et al., 2015; Guo et al., 2017) is

        ECE = Σ_b (n_b / N) · |mean p in b - mean outcome in b|,    N = 2B.

    Returns (tensors): ``ece``, ``accuracy`` (a tie counts 1/2), ``margin`` (mean r_w - r_l), and
    for reliability plots ``bin_confidence``, ``bin_accuracy`` (0 where a bin is empty) and
    ``bin_count``, each (n_bins,).
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must both be (B,); got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    if chosen_rewards.numel() == 0:
        raise NumericalError("calibration needs at least one pair; got an empty batch")
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1; got {n_bins}")
    margins = chosen_rewards - rejected_rewards  # (B,)
    margins = margins.to(torch.promote_types(margins.dtype, torch.float32))  # at least fp32
    probs = torch.cat([torch.sigmoid(margins), torch.sigmoid(-margins)])  # (2B,)
    outcomes = torch.cat([torch.ones_like(margins), torch.zeros_like(margins)])  # (2B,)
    bins = (probs * n_bins).long().clamp(max=n_bins - 1)  # (2B,) in 0..n_bins-1
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, bins, torch.ones_like(probs))
    conf_sum = torch.zeros_like(count).index_add_(0, bins, probs)  # (n_bins,)
    acc_sum = torch.zeros_like(count).index_add_(0, bins, outcomes)  # (n_bins,)
    ece = (conf_sum - acc_sum).abs().sum() / probs.numel()
    return {
        "ece": ece,
        "accuracy": pairwise_accuracy(margins),
        "margin": margins.mean(),
        "bin_confidence": conf_sum / count.clamp(min=1),
        "bin_accuracy": acc_sum / count.clamp(min=1),
        "bin_count": count,
    }
