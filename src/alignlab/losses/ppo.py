"""Policy-gradient losses for RL from a reward: PPO (policy and value), GRPO / Dr. GRPO, REINFORCE,
RLOO's sequence-ratio loss, DAPO, GSPO; the entropy bonus; the :data:`POLICY_LOSSES` registry.

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

Importance ratios: **per token** ρ_t = π_θ(y_t)/π_old(y_t) (PPO, GRPO, DAPO), or **per sequence**
(RLOO: exp Σ_t, the ratio of the sequence probabilities; GSPO: exp mean_t, its geometric mean per
token). A sequence ratio is clipped once per response, and its log is clamped to
±SEQ_LOG_RATIO_CLAMP before ``exp`` so a far-off response cannot make inf·0 = NaN gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from alignlab.losses.kl import kl_estimate
from alignlab.losses.reduce import masked_mean, masked_sum, masked_var, seq_mean
from alignlab.losses.registry import Stats, choose

# exp(20) ≈ 4.9e8: finite in float32; a sequence log-ratio beyond ±20 is saturated (gradient 0).
SEQ_LOG_RATIO_CLAMP = 20.0


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
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    cliprange: float,
    cliprange_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token ``max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))``, ρ = exp(logπ − logπ_old); ``(B, T)``.

    ε_low = ``cliprange``, ε_high = ``cliprange_high`` (defaults to ε_low: the symmetric PPO clip).
    Returns (loss per token, ratio, clipped-term-active indicator as float).
    """
    high = cliprange if cliprange_high is None else cliprange_high
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    return _clip_objective(ratio, advantages, cliprange, high)


def _clip_objective(
    ratio: torch.Tensor, advantages: torch.Tensor, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``max(−A·ρ, −A·clip(ρ, 1−low, 1+high))`` elementwise, the ratio, and where the clip is active."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - low, 1.0 + high)
    per_item = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).to(per_item.dtype)  # gradient is 0 here
    return per_item, ratio, was_clipped


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
    reduce = choose(POLICY_REDUCTIONS, reduction, "policy loss reduction")
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
    kl_estimator: str = "k3",
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
    ``kl_estimator``: the paper's k3 (default) has the expected gradient of KL(π_ref‖π_θ) on
    samples of π_θ; ``"k2"`` gives that of KL(π_θ‖π_ref), the KL the reward-side penalty means
    (see :mod:`alignlab.losses.kl`). The estimator's ratio uses the current π_θ, so the samples
    are on-policy only in the first epoch of a rollout.

    Stats: ``policy/clipfrac``, ``policy/ratio_mean``, ``kl`` (per-token mean of the estimator),
    ``policy/approx_kl`` (k3 of π_old vs π_θ), ``policy/loss``.
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, mask=mask)
    _check_seq(advantages, mask)
    reduce = choose(GRPO_LOSS_TYPES, loss_type, "GRPO loss type")
    logprobs, old_logprobs, ref_logprobs = _zero_padding(mask, logprobs, old_logprobs, ref_logprobs)
    adv = advantages.unsqueeze(-1).expand_as(logprobs)  # (B,) -> (B, T)
    per_token, ratio, was_clipped = _clipped_surrogate(logprobs, old_logprobs, adv, cliprange)
    kl = kl_estimate(logprobs, ref_logprobs, kl_estimator)  # (B, T), grad through logprobs
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


def _seq_ratio(log_ratio_seq: torch.Tensor) -> torch.Tensor:
    """exp of a per-sequence log-ratio ``(B,)``, its log clamped to ±SEQ_LOG_RATIO_CLAMP."""
    return torch.exp(log_ratio_seq.clamp(-SEQ_LOG_RATIO_CLAMP, SEQ_LOG_RATIO_CLAMP))


def reinforce_loss(
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Stats]:
    """REINFORCE with a sequence advantage (Williams 1992; with RLOO advantages, Ahmadian et al. 2024).

        loss = mean_i [ −A_i · w_i · Σ_t log π_θ(y_{i,t}) ]     (per sequence; rows with no valid
                                                                token are left out of the mean)
        w_i  = 1                                                 on-policy (old_logprobs=None)
        w_i  = sg(exp(Σ_t log π_θ(y_{i,t}) − Σ_t log π_old(y_{i,t})))    with old_logprobs

    With ``old_logprobs`` (the policy that sampled y, e.g. before the previous minibatch's step)
    the gradient is the importance-weighted on-policy gradient E_{π_old}[π_θ/π_old · A ∇log π_θ]
    = E_{π_θ}[A ∇log π_θ], with the **sequence** ratio: the sample's probability is a product over
    tokens. w is a detached weight, so the loss value equals the on-policy one when π_θ = π_old.
    The weight is not clipped (unbiased; its variance grows with the policy's drift; see
    :func:`rloo_loss` for the clipped form).

    Shapes: logprobs, mask, old_logprobs ``(B, T)``; advantages ``(B,)`` (constants, e.g. from
    :func:`alignlab.losses.advantages.rloo_advantages`).
    Stats: ``policy/loss``, ``policy/seq_logps_mean`` (mean Σ_t log π per sequence), and with
    old_logprobs ``policy/ratio_mean`` (mean sequence ratio w).
    """
    _check_shapes(logprobs=logprobs, mask=mask)
    _check_seq(advantages, mask)
    (logprobs,) = _zero_padding(mask, logprobs)
    seq_logps = masked_sum(logprobs, mask, dim=-1)  # (B,)
    nonempty = mask.bool().any(-1)  # (B,)
    weighted_adv = advantages.detach().to(seq_logps.dtype)  # (B,)
    stats: Stats = {}
    if old_logprobs is not None:
        _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs)
        (old_logprobs,) = _zero_padding(mask, old_logprobs)
        ratio = _seq_ratio(seq_logps.detach() - masked_sum(old_logprobs.detach(), mask, dim=-1))  # (B,)
        weighted_adv = weighted_adv * ratio
        stats["policy/ratio_mean"] = masked_mean(ratio, nonempty)
    loss = masked_mean(-weighted_adv * seq_logps, nonempty)
    with torch.no_grad():
        stats["policy/loss"] = loss.detach()
        stats["policy/seq_logps_mean"] = masked_mean(seq_logps.detach(), nonempty)
    return loss, stats


def _sequence_clipped(
    log_ratio_seq: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    low: float,
    high: float,
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate on a sequence ratio ``(B,)``, mean over non-empty rows, with its stats."""
    nonempty = mask.bool().any(-1)  # (B,)
    ratio = _seq_ratio(log_ratio_seq)  # (B,)
    per_seq, ratio, was_clipped = _clip_objective(ratio, advantages.detach().to(ratio.dtype), low, high)  # (B,)
    loss = masked_mean(per_seq, nonempty)
    with torch.no_grad():
        stats = {
            "policy/loss": loss.detach(),
            "policy/clipfrac": masked_mean(was_clipped, nonempty),  # per sequence
            "policy/ratio_mean": masked_mean(ratio.detach(), nonempty),  # per sequence
        }
    return loss, stats


def rloo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> tuple[torch.Tensor, Stats]:
    """RLOO's clipped loss with a **sequence-level** ratio (Ahmadian et al. 2024, arXiv:2402.14740,
    which treats the whole response as one action; the clipped form of TRL's RLOO trainer).

        ρ_i  = exp(Σ_t log π_θ(y_{i,t}) − Σ_t log π_old(y_{i,t}))      (B,)
        loss = mean_i max(−ρ_i A_i, −clip(ρ_i, 1−ε, 1+ε) A_i)         (per sequence)

    At ρ = 1 the gradient of response i is −A_i Σ_t ∇log π_θ(y_{i,t}) / B: the REINFORCE gradient
    of the whole sequence, not its per-token mean (a per-token ratio averaged per sequence would
    give A_i/|y_i| · Σ_t ∇log π). Shapes: logprobs, old_logprobs, mask ``(B, T)``; advantages
    ``(B,)``, e.g. :func:`alignlab.losses.advantages.rloo_advantages`. Stats: ``policy/loss``,
    ``policy/clipfrac`` and ``policy/ratio_mean`` (both per sequence).
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    _check_seq(advantages, mask)
    logprobs, old_logprobs = _zero_padding(mask, logprobs, old_logprobs)
    log_ratio_seq = masked_sum(logprobs - old_logprobs, mask, dim=-1)  # (B,)
    return _sequence_clipped(log_ratio_seq, advantages, mask, cliprange, cliprange)


def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange_low: float = 3e-4,
    cliprange_high: float = 4e-4,
) -> tuple[torch.Tensor, Stats]:
    """Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071).

        s_i  = exp( 1/|y_i| · Σ_t (log π_θ(y_{i,t}) − log π_old(y_{i,t})) )     (B,) length-normalised
        loss = mean_i max(−s_i A_i, −clip(s_i, 1−ε_low, 1+ε_high) A_i)         (per sequence)

    The ratio is the per-token geometric mean of the sequence ratio, so its scale does not depend
    on the length, and a whole response is clipped or kept: the paper's ε are tiny, 3e-4 / 4e-4
    (token-level PPO uses 0.2). Advantages ``(B,)`` are group-normalised scores
    (:func:`alignlab.losses.advantages.grpo_advantages`). Shapes as :func:`rloo_loss`; stats too.
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    _check_seq(advantages, mask)
    logprobs, old_logprobs = _zero_padding(mask, logprobs, old_logprobs)
    log_ratio_seq = seq_mean(logprobs - old_logprobs, mask)  # (B,) per-token mean per sequence
    return _sequence_clipped(log_ratio_seq, advantages, mask, cliprange_low, cliprange_high)


def dapo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange_low: float = 0.2,
    cliprange_high: float = 0.28,
) -> tuple[torch.Tensor, Stats]:
    """DAPO's policy loss (Yu et al. 2025, arXiv:2503.14476): clip-higher and token-level
    normalisation.

        ρ_t  = exp(log π_θ(y_t) − log π_old(y_t))
        loss = Σ_i Σ_t max(−ρ_t A_i, −clip(ρ_t, 1−ε_low, 1+ε_high) A_i) / Σ_i |y_i|    (per token)

    ε_high > ε_low lets unlikely tokens with A > 0 grow further (against entropy collapse); the
    mean is over every valid token of the batch, so a long response weighs in proportion to its
    length (GRPO's per-sequence mean down-weights each token of a long one). DAPO has no KL term.
    Use with :func:`alignlab.losses.advantages.dapo_keep_groups` (dynamic sampling) and
    :func:`alignlab.losses.advantages.overlong_penalty`. Advantages ``(B,)`` (one per response,
    group-normalised) or ``(B, T)``. Stats as :func:`ppo_policy_loss`.
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, mask=mask)
    if advantages.dim() == 1:
        _check_seq(advantages, mask)
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)  # (B,) -> (B, T)
    _check_shapes(logprobs=logprobs, advantages=advantages)
    logprobs, old_logprobs, advantages = _zero_padding(mask, logprobs, old_logprobs, advantages)
    per_token, ratio, was_clipped = _clipped_surrogate(
        logprobs, old_logprobs, advantages, cliprange_low, cliprange_high
    )
    loss = token_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "policy/loss": loss.detach(),
            "policy/clipfrac": masked_mean(was_clipped, mask),
            "policy/approx_kl": masked_mean(kl_estimate(old_logprobs, logprobs.detach(), "k3"), mask),
            "policy/ratio_mean": masked_mean(ratio.detach(), mask),
        }
    return loss, stats


def entropy_bonus(logits: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Mean entropy of π over valid response tokens, **with grad**, for an entropy bonus.

        H = masked_mean(H_t, mask),   H_t = −Σ_v π(v|·) log π(v|·)           (per token)

    The trainer adds ``−c · H`` to its loss (c ≥ 0, the entropy coefficient) to keep the policy
    from collapsing early (Schulman et al. 2017, eq. 9; Mnih et al. 2016). ``logits`` ``(B, T, V)``
    at the response positions, ``mask`` ``(B, T)``. Stats: ``entropy``.
    """
    entropy = entropy_from_logits(logits, mask)
    return entropy, {"entropy": entropy.detach()}


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PolicyLoss:
    """One row of :data:`POLICY_LOSSES`: a policy loss and what it is fed with."""

    fn: Callable[..., tuple[torch.Tensor, Stats]]
    """The pure loss function."""
    advantages: str
    """The estimator whose advantages it takes: ``gae`` (per token, needs a value model),
    ``reinforce_pp`` (per token, :func:`~alignlab.losses.advantages.reinforce_pp_advantages`), or
    a key of ``GROUP_ADVANTAGES`` (one per response)."""
    defaults: dict[str, float] = field(default_factory=dict)
    """Published defaults of its hyperparameters."""


POLICY_LOSSES: dict[str, PolicyLoss] = {
    # Schulman et al. 2017: ε = 0.2
    "ppo": PolicyLoss(ppo_policy_loss, "gae", {"cliprange": 0.2}),
    # Shao et al. 2024 (DeepSeekMath): KL weight β = 0.04 in the loss; ε = 0.2
    "grpo": PolicyLoss(grpo_loss, "grpo", {"cliprange": 0.2, "beta": 0.04}),
    # Williams 1992 / Ahmadian et al. 2024: no hyperparameter beyond the group size
    "reinforce": PolicyLoss(reinforce_loss, "rloo"),
    # Ahmadian et al. 2024, clipped: ε = 0.2
    "rloo": PolicyLoss(rloo_loss, "rloo", {"cliprange": 0.2}),
    # Yu et al. 2025: ε_low = 0.2, ε_high = 0.28
    "dapo": PolicyLoss(dapo_loss, "grpo", {"cliprange_low": 0.2, "cliprange_high": 0.28}),
    # Zheng et al. 2025: ε_low = 3e-4, ε_high = 4e-4 (sequence-level ratio)
    "gspo": PolicyLoss(gspo_loss, "grpo", {"cliprange_low": 3e-4, "cliprange_high": 4e-4}),
    # Hu 2025: PPO's clipped token loss on globally normalised REINFORCE++ advantages, ε = 0.2
    "reinforce_pp": PolicyLoss(ppo_policy_loss, "reinforce_pp", {"cliprange": 0.2}),
}


def get_policy_loss(name: str) -> PolicyLoss:
    """The registry row for ``name``; an unknown name raises ConfigError naming the closest one."""
    return choose(POLICY_LOSSES, name, "policy loss")


def policy_loss_defaults(name: str) -> dict[str, float]:
    """The published defaults of policy loss ``name`` (a copy)."""
    return dict(get_policy_loss(name).defaults)
