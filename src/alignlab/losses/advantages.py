"""Advantage estimators: GAE for PPO, group baselines for RLOO and GRPO, REINFORCE++'s globally
normalised returns, DAPO's dynamic-sampling filter and overlong shaping, and the best-of-n KL.

Token tensors are ``(B, T)`` aligned with response tokens; ``mask`` is 1 on valid response tokens.
Sequence-level estimators take one score per response, ``(B,)``, with the responses of a prompt
stored contiguously: ``[prompt0 × k, prompt1 × k, ...]``.

Everything here produces training *targets*, so results are computed without autograd and are
detached from the inputs.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from functools import partial

import torch

from alignlab.errors import ConfigError
from alignlab.losses.kl import reward_with_kl
from alignlab.losses.reduce import whiten


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

        δ_t = r_t + γ · V_{t+1} − V_t
        A_t = δ_t + γλ · A_{t+1}          returns_t = A_t + V_t

    over the valid tokens of each row. The episode ends at the last valid response token, so
    V and A beyond it are 0 (values at padded positions are never read). Positions where
    ``mask`` = 0 are skipped: they output 0 and the recursion carries straight across them, so
    right padding, left padding and masked holes inside a response all work — the valid tokens
    of a row are treated as one contiguous episode.

    Shapes: rewards, values, mask ``(B, T)`` -> advantages, returns ``(B, T)``; vectorised over
    B, reverse loop over T. γ=λ=1 gives returns = reward-to-go; λ=0 gives one-step TD errors.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must all be the same (B, T)"
        )
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values = rewards.to(dtype), values.to(dtype)
    valid = mask.bool()  # (B, T)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = rewards.new_zeros(B)  # (B,) V of the next valid token, 0 past the end
    next_adv = rewards.new_zeros(B)  # (B,) A of the next valid token, 0 past the end
    zero = rewards.new_zeros(B)
    for t in reversed(range(T)):
        m = valid[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv_t = delta + gamma * lam * next_adv  # (B,)
        advantages[:, t] = torch.where(m, adv_t, zero)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv_t, next_adv)
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))  # (B, T)
    return advantages, returns


@torch.no_grad()
def whiten_advantages(advantages: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise advantages to mean 0 / std 1 over the valid tokens of the whole batch (per token).

    Padding stays 0. ``shift_mean=False`` only rescales (the mean is kept). Uses
    :func:`alignlab.losses.reduce.whiten`; ``(B, T) -> (B, T)``.
    """
    return whiten(advantages, mask, shift_mean=shift_mean)


def _as_int(x: object) -> int | None:
    """``x`` as an int if it is an integer (int, numpy or 0-d torch integer), else None."""
    if isinstance(x, bool):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


def _grouped(scores: torch.Tensor, group_size: int, name: str) -> torch.Tensor:
    """``(B·k,) -> (B, k)`` with the checks every group estimator needs."""
    g = _as_int(group_size)
    if g is None or g < 2:
        raise ConfigError(
            f"{name}: group size must be an integer >= 2 (responses sampled per prompt; a "
            f"baseline needs at least one other response), got {group_size!r}"
        )
    if scores.dim() != 1:
        raise ValueError(f"{name}: scores must be 1-D (B·k,), got shape {tuple(scores.shape)}")
    if scores.numel() % g:
        raise ConfigError(
            f"{name}: {scores.numel()} scores do not split into groups of {g}; "
            "the rollout batch must hold whole groups (batch size a multiple of the group size)"
        )
    dtype = torch.promote_types(scores.dtype, torch.float32)
    return scores.detach().to(dtype).reshape(-1, g)


def rloo_advantages(scores: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, arXiv:2402.14740, eq. 6).

        A_i = r_i − 1/(k−1) · Σ_{j≠i} r_j          (over the k responses of the same prompt)

    ``scores`` ``(B·k,)`` grouped contiguously ``[prompt0 × k, prompt1 × k, ...]`` ->
    ``(B·k,)``. Requires k ≥ 2.
    """
    r = _grouped(scores, k, "rloo_advantages")  # (B, k)
    baseline = (r.sum(-1, keepdim=True) - r) / (r.shape[-1] - 1)  # (B, k) mean of the other k−1
    return (r - baseline).reshape(-1)  # (B·k,)


def grpo_advantages(
    scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, §4.1.2).

        GRPO:     A_i = (r_i − mean(r_group)) / (std(r_group) + eps)
        Dr. GRPO: A_i =  r_i − mean(r_group)          (scale_by_std=False; Liu et al. 2025,
                  "Understanding R1-Zero-like Training", arXiv:2503.20783 — dividing by the
                  std up-weights prompts that are nearly always right or always wrong)

    std is the sample standard deviation of the group (Bessel-corrected, n−1), as in the common
    implementations; a group with identical scores gets advantages 0. ``(B·G,) -> (B·G,)``,
    grouped contiguously; requires group_size ≥ 2.
    """
    r = _grouped(scores, group_size, "grpo_advantages")  # (B, G)
    adv = r - r.mean(-1, keepdim=True)  # (B, G)
    if scale_by_std:
        adv = adv / (r.std(-1, keepdim=True, unbiased=True) + eps)
    return adv.reshape(-1)  # (B·G,)


# Sequence-level advantage estimators with one signature, (scores (B·k,), group_size) -> (B·k,).
GROUP_ADVANTAGES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "rloo": rloo_advantages,
    "grpo": partial(grpo_advantages, scale_by_std=True),
    "dr_grpo": partial(grpo_advantages, scale_by_std=False),
}


@torch.no_grad()
def reinforce_pp_advantages(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    estimator: str = "k1",
    gamma: float = 1.0,
    clip_score: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++", arXiv:2501.03262): no critic, no group.

        r_t = −β · kl_t  +  [t is the last valid token] · score          (per token, reward_with_kl)
        G_t = Σ_{s ≥ t} γ^{s−t} r_s                                      (return-to-go over the row)
        A_t = (G_t − mean(G)) / std(G)     mean and std over **every valid token of the batch**

    The global normalisation (not per prompt, not per sequence) is the method's point: it is the
    stable baseline that replaces PPO's value model and GRPO's group. ``scores`` ``(B,)``;
    ``logprobs`` (of the sampling policy, detached), ``ref_logprobs``, ``mask`` ``(B, T)``;
    ``estimator`` as in :func:`alignlab.losses.kl.kl_estimate` (the paper uses k1).
    Returns ``(advantages, returns)``, both ``(B, T)`` and 0 on padding; feed the advantages to
    the clipped per-token loss ``alignlab.losses.ppo.ppo_policy_loss``.
    """
    rewards, _ = reward_with_kl(scores, logprobs, ref_logprobs, mask, beta, estimator, clip_score)  # (B, T)
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=gamma, lam=1.0)  # V = 0: A = G
    return whiten(returns, mask), returns


def dapo_keep_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al. 2025, arXiv:2503.14476): keep only informative groups.

    A group whose G responses all have the same score (all right or all wrong) has group-relative
    advantages 0 and gives no gradient; DAPO drops it and samples more prompts until the batch is
    full. ``scores`` ``(B·G,)`` grouped contiguously -> a bool mask ``(B·G,)``, True for every
    response of a group whose scores are not all equal (``mask.view(-1, G)[:, 0]`` per group).
    """
    r = _grouped(scores, group_size, "dapo_keep_groups")  # (B, G)
    keep = r.amax(-1) > r.amin(-1)  # (B,)
    return keep.repeat_interleave(r.shape[-1])  # (B·G,)


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476), added to the scores.

                  0                                 |y| ≤ L_max − L_cache
        R(y) =    ((L_max − L_cache) − |y|) / L_cache    L_max − L_cache < |y| ≤ L_max
                  −1                                |y| > L_max

    A linear ramp from 0 to −1 over the last ``cache_len`` tokens of the budget ``max_len``, so a
    response is not punished abruptly for being cut. ``lengths`` ``(B,)`` response tokens ->
    ``(B,)`` float32 penalties (≤ 0). The paper: L_max = 20480, L_cache = 4096.
    """
    if not 0 < cache_len <= max_len:
        raise ConfigError(
            f"overlong_penalty needs 0 < cache_len <= max_len; got cache_len={cache_len}, max_len={max_len}"
        )
    n = lengths.to(torch.promote_types(lengths.dtype, torch.float32))
    start = max_len - cache_len
    ramp = (start - n) / cache_len  # (B,) in [−1, 0) inside the cache window
    out = torch.where(n <= start, torch.zeros_like(n), ramp)
    return torch.where(n > max_len, torch.full_like(n, -1.0), out)


def best_of_n_kl(n: int) -> float:
    """Analytic KL(π_best-of-n ‖ π_base) = log n − (n−1)/n, in nats.

    Stiennon et al. 2020 (arXiv:2009.01325, appendix); Beirami et al. 2024 (arXiv:2401.01879)
    show it is an upper bound on the true KL (exact when the n samples are almost surely
    distinct). n = 1 gives 0.
    """
    n_int = _as_int(n)
    if n_int is None or n_int < 1:
        raise ConfigError(f"best-of-n: n must be an integer >= 1, got {n!r}")
    return math.log(n_int) - (n_int - 1) / n_int
