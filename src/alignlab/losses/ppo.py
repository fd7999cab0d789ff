"""Policy-gradient losses for RL from a reward: PPO (policy and value), GRPO / Dr. GRPO, REINFORCE.

Conventions: token tensors are ``(B, T)`` aligned with response tokens; ``mask`` is 1 on valid
response tokens; ``logprobs`` are per-token log π_θ of the sampled token (with grad),
``old_logprobs`` the same under the policy that generated the rollout (no grad). Every loss
returns ``(loss, stats)``: ``loss`` a differentiable 0-d tensor, ``stats`` a dict of detached
0-d tensors (no host sync here; the trainer calls ``.item()`` when it logs).

Reductions (all through :mod:`alignlab.losses.reduce`):

* **per token** (``"token"``): mean over every valid token of the batch — long responses weigh more;
* **per sequence** (``"sequence"``): mean over each response's valid tokens, then mean over the
  responses that have at least one valid token — every response weighs the same. A row with no
  valid token is left out of the mean, so adding an empty row never changes the loss.
"""
from __future__ import annotations

from typing import Callable

import torch

from alignlab.losses.kl import _choose, kl_estimate
from alignlab.losses.reduce import masked_mean, masked_sum, masked_var, seq_mean

Stats = dict[str, torch.Tensor]


def _check_shapes(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"expected the same (B, T) shape for all of: {listed}")


def _check_seq(advantages: torch.Tensor, mask: torch.Tensor) -> None:
    if advantages.dim() != 1 or advantages.shape[0] != mask.shape[0]:
        raise ValueError(
            f"advantages must be one per sequence, (B,) = ({mask.shape[0]},); got {tuple(advantages.shape)}"
        )


def _zero_padding(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Replace padded entries by 0 so garbage there (even NaN/inf) reaches neither the loss nor a
    gradient (``torch.where`` sends exactly 0 to the entries it does not select)."""
    valid = mask.bool()
    return tuple(torch.where(valid, t, torch.zeros_like(t)) for t in tensors)


def token_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token reduction: Σ over valid tokens / number of valid tokens in the batch. ``(B, T) -> ()``."""
    return masked_mean(per_token, mask)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence reduction: mean over each row's valid tokens, then mean over non-empty rows.

    ``(B, T) -> ()``. Raises NumericalError when no row has a valid token.
    """
    per_seq = seq_mean(per_token, mask)  # (B,), 0 for empty rows
    nonempty = mask.bool().any(-1)  # (B,)
    return masked_mean(per_seq, nonempty)


POLICY_REDUCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "token": token_mean,
    "sequence": sequence_mean,
}


def _clipped_surrogate(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))``, ρ = exp(logπ − logπ_old); all ``(B, T)``.

    Returns (loss per token, ratio, clipped-term-active indicator as float).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)  # (B, T)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    was_clipped = (clipped > unclipped).to(per_token.dtype)  # (B, T) gradient is 0 here
    return per_token, ratio, was_clipped


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    reduction: str = "token",
) -> tuple[torch.Tensor, Stats]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), as a loss to minimise.

        ρ_t  = exp(log π_θ(y_t) − log π_old(y_t))
        L_t  = max(−A_t · ρ_t,  −A_t · clip(ρ_t, 1−ε, 1+ε))
        loss = reduce(L, mask)          reduction "token" (per token) or "sequence" (per sequence)

    Shapes: logprobs, old_logprobs, advantages, mask ``(B, T)``.

    Stats (per-token means over valid tokens):
      ``policy/clipfrac``  fraction of tokens where the clipped term is the larger one (no gradient);
      ``policy/approx_kl`` k3 estimate of KL(π_old‖π_θ) (samples are from π_old);
      ``policy/ratio_mean`` mean ρ.
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    reduce = _choose(POLICY_REDUCTIONS, reduction, "policy loss reduction")
    logprobs, old_logprobs, advantages = _zero_padding(mask, logprobs, old_logprobs, advantages)
    per_token, ratio, was_clipped = _clipped_surrogate(logprobs, old_logprobs, advantages, cliprange)
    loss = reduce(per_token, mask)
    with torch.no_grad():
        stats = {
            "policy/loss": loss.detach(),
            "policy/clipfrac": masked_mean(was_clipped, mask),
            "policy/approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs.detach(), "k3"), mask),
            "policy/ratio_mean": masked_mean(ratio.detach(), mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, Stats]:
    """Clipped value loss of PPO (Schulman et al. 2017; the clipping of the OpenAI baselines PPO2).

        V^clip_t = V_old,t + clip(V_t − V_old,t, −ε_v, ε_v)
        L_t      = ½ · max((V_t − R_t)², (V^clip_t − R_t)²)
        loss     = per-token mean of L over valid tokens

    Shapes: values, old_values, returns, mask ``(B, T)``.
    Stats: ``value/clipfrac`` (fraction of tokens where the clipped error is the larger one),
    ``value/mean`` (mean V), ``value/error`` (mean (V − R)²); all per-token means.
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    values, old_values, returns = _zero_padding(mask, values, old_values, returns)
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)  # (B, T)
    err_unclipped = (values - returns).square()  # (B, T)
    err_clipped = (clipped_values - returns).square()  # (B, T)
    per_token = 0.5 * torch.maximum(err_unclipped, err_clipped)  # (B, T)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "value/loss": loss.detach(),
            "value/clipfrac": masked_mean((err_clipped > err_unclipped).to(per_token.dtype), mask),
            "value/mean": masked_mean(values.detach(), mask),
            "value/error": masked_mean(err_unclipped.detach(), mask),
        }
    return loss, stats


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 − Var[R − V] / Var[R]`` over the valid tokens (per token); 1 is perfect, ≤ 0 is useless.

    NaN when the returns have zero variance (undefined). ``(B, T) x3 -> ()``, detached.
    """
    _check_shapes(values=values, returns=returns, mask=mask)
    var_returns = masked_var(returns, mask)
    if var_returns == 0:
        return torch.full((), float("nan"), dtype=var_returns.dtype, device=var_returns.device)
    return 1.0 - masked_var(returns - values, mask) / var_returns


def _chunk_entropy(chunk: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of ``chunk`` ``(n, V) -> (n,)``, computed in float32."""
    z = chunk.float()  # (n, V)
    lse = torch.logsumexp(z, dim=-1)  # (n,)
    p = torch.exp(z - lse.unsqueeze(-1))  # (n, V)
    pz = torch.where(p > 0, p * z, torch.zeros_like(z))  # (n, V) avoids 0 · (−inf)
    return lse - pz.sum(-1)  # (n,)


def token_entropy(logits: torch.Tensor, chunk_tokens: int | None = None) -> torch.Tensor:
    """Entropy of the softmax at every position: ``(B, T, V) -> (B, T)``, float32.

        H = logsumexp(z) − Σ_v softmax(z)_v · z_v

    Memory: positions are processed in chunks (by default ≈16M logits each), so only one chunk
    at a time is upcast to float32 — a full ``(B, T, V)`` float32 copy of bf16 logits can be
    GBs. When gradients are needed, each chunk is recomputed in the backward pass
    (activation checkpointing) instead of keeping its float32 intermediates, so the graph holds
    only the ``(B, T)`` result and the original logits. Positions whose logits are −inf (masked
    vocabulary) contribute 0. Differentiable.
    """
    B, T, V = logits.shape
    flat = logits.reshape(B * T, V)  # (N, V) view when contiguous
    if chunk_tokens is None:
        chunk_tokens = max(1, (1 << 24) // max(V, 1))
    recompute = torch.is_grad_enabled() and logits.requires_grad
    if recompute:
        from torch.utils.checkpoint import checkpoint
    out = []
    # split (not slicing in a loop): its backward writes all chunk gradients with one cat,
    # where per-slice backward would allocate a full (N, V) gradient per chunk
    for chunk in flat.split(chunk_tokens, dim=0):  # (n, V) each
        if recompute:
            out.append(checkpoint(_chunk_entropy, chunk, use_reentrant=False))
        else:
            out.append(_chunk_entropy(chunk))
    if not out:
        return logits.new_zeros((B, T), dtype=torch.float32)
    return torch.cat(out).reshape(B, T)  # (B, T)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token mean entropy of π over valid response tokens: ``(B, T, V), (B, T) -> ()``.

    See :func:`token_entropy` for how memory is kept down.
    """
    if logits.shape[:2] != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} disagree on (B, T)")
    return masked_mean(token_entropy(logits), mask)


# -------------------------------------------------------------------------------- GRPO / Dr. GRPO


def _grpo_reduce(per_token: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """GRPO: per-sequence mean (1/G Σ_i 1/|o_i| Σ_t)."""
    return sequence_mean(per_token, mask)


def _dr_grpo_reduce(per_token: torch.Tensor, mask: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """Dr. GRPO: Σ over all valid tokens / (B · max_len) — a constant, so no length bias."""
    budget = mask.shape[-1] if max_len is None else max_len
    if budget <= 0:
        raise ValueError(f"dr_grpo needs max_len > 0 (the generation budget in tokens), got {budget}")
    return masked_sum(per_token, mask) / (mask.shape[0] * budget)


GRPO_LOSS_TYPES: dict[str, Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]] = {
    "grpo": _grpo_reduce,
    "dr_grpo": _dr_grpo_reduce,
}


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    beta: float,
    loss_type: str = "grpo",
    max_len: int | None = None,
) -> tuple[torch.Tensor, Stats]:
    """GRPO objective (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, eq. 3) as a loss.

        ρ_t  = exp(log π_θ(y_t) − log π_old(y_t)),   A_i the sequence advantage on every token
        L_t  = max(−A_i ρ_t, −A_i clip(ρ_t, 1−ε, 1+ε)) + β · k3_t,
        k3_t = π_ref/π_θ − log(π_ref/π_θ) − 1         (KL to π_ref in the loss, not the reward)

    ``loss_type`` (a key of :data:`GRPO_LOSS_TYPES`):
      ``"grpo"``    per sequence: 1/G Σ_i 1/|y_i| Σ_t L_t (each response weighs the same, which
                    favours long wrong answers and short right ones);
      ``"dr_grpo"`` Σ_i Σ_t L_t / (G · max_len) with ``max_len`` the generation budget (Liu et al.
                    2025, arXiv:2503.20783): a constant normaliser, so no length bias. With
                    ``max_len=None`` the padded length T is used, constant only if batches are
                    padded to the budget.

    Shapes: logprobs, old_logprobs, ref_logprobs, mask ``(B, T)``; advantages ``(B,)``.
    Stats: ``policy/clipfrac``, ``policy/ratio_mean``, ``kl`` (per-token mean k3 to π_ref),
    ``policy/approx_kl`` (k3 of π_old vs π_θ), ``policy/loss``.
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, mask=mask)
    _check_seq(advantages, mask)
    reduce = _choose(GRPO_LOSS_TYPES, loss_type, "GRPO loss type")
    logprobs, old_logprobs, ref_logprobs = _zero_padding(mask, logprobs, old_logprobs, ref_logprobs)
    adv = advantages.unsqueeze(-1).expand_as(logprobs)  # (B,) -> (B, T)
    per_token, ratio, was_clipped = _clipped_surrogate(logprobs, old_logprobs, adv, cliprange)
    kl = kl_estimate(logprobs, ref_logprobs, "k3")  # (B, T), grad through logprobs
    if beta != 0:
        per_token = per_token + beta * kl
    loss = reduce(per_token, mask, max_len)
    with torch.no_grad():
        stats = {
            "policy/loss": loss.detach(),
            "policy/clipfrac": masked_mean(was_clipped, mask),
            "policy/ratio_mean": masked_mean(ratio.detach(), mask),
            "policy/approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs.detach(), "k3"), mask),
            "kl": masked_mean(kl.detach(), mask),
        }
    return loss, stats


def reinforce_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, Stats]:
    """REINFORCE with a sequence advantage (Williams 1992; with RLOO advantages, Ahmadian et al. 2024).

        loss = mean_i [ −A_i · Σ_t log π_θ(y_{i,t}) ]     (per sequence; rows with no valid token
                                                          are left out of the mean)

    Shapes: logprobs, mask ``(B, T)``; advantages ``(B,)`` (constants, e.g. from
    :func:`alignlab.losses.advantages.rloo_advantages`).
    Stats: ``policy/loss``, ``policy/seq_logps_mean`` (mean Σ_t log π per sequence).
    """
    _check_shapes(logprobs=logprobs, mask=mask)
    _check_seq(advantages, mask)
    (logprobs,) = _zero_padding(mask, logprobs)
    seq_logps = masked_sum(logprobs, mask, dim=-1)  # (B,)
    nonempty = mask.bool().any(-1)  # (B,)
    loss = masked_mean(-advantages.detach().to(seq_logps.dtype) * seq_logps, nonempty)
    with torch.no_grad():
        stats = {
            "policy/loss": loss.detach(),
            "policy/seq_logps_mean": masked_mean(seq_logps.detach(), nonempty),
        }
    return loss, stats
