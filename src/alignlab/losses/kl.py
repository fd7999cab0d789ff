"""KL to the reference policy: per-token estimators, the β controllers, and the KL-penalised reward.

Conventions: token tensors are ``(B, T)`` aligned with response tokens; ``mask`` is 1 on valid
response tokens; ``logprobs`` / ``ref_logprobs`` are per-token log π / log π_ref of the *sampled*
token, and the samples come from π (the policy that generated the rollout).

Estimators (Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html),
with the log ratio ℓ = log π(y_t) − log π_ref(y_t) and y_t ~ π:

* ``k1 = ℓ``                     unbiased for KL(π‖π_ref), high variance, can be negative;
* ``k2 = ½ ℓ²``                  biased, low variance, always ≥ 0;
* ``k3 = (exp(−ℓ) − 1) + ℓ``     unbiased, low variance, always ≥ 0 (``exp(x) ≥ 1 + x``).

In the reward (PPO) the estimate is a constant; in the **loss** (GRPO, :func:`kl_loss_term`) what
matters is its gradient. On samples y ~ π, with ∇ℓ = ∇log π:

* ``∇k1 = ∇log π``                 expectation Σ_y π ∇log π = 0: no gradient at all on average;
* ``∇k2 = ℓ · ∇log π``             expectation = ∇KL(π‖π_ref), the gradient of the KL we mean;
* ``∇k3 = (1 − π_ref/π) ∇log π``   expectation = −Σ_y π_ref ∇log π = ∇KL(π_ref‖π), the reverse KL.

So the loss term defaults to k2 (its *value* is biased, its gradient is the right one); k3, as in
GRPO, pulls towards π_ref with the gradient of the other KL direction.

Controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2):
a fixed β, or an adaptive β driven towards a target KL by a clipped proportional controller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from alignlab.errors import ConfigError
from alignlab.losses.reduce import masked_mean
from alignlab.losses.registry import Stats, choose

# k3 clamps the log ratio to [-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP] before exponentiating:
# exp(20) ≈ 4.9e8 is finite in float32 (and its square too), so k3 and anything built on it stay
# finite however far π drifts from π_ref. Beyond the clamp the value saturates (at most ≈ 4.9e8 for
# ℓ ≤ −20, ≈ 19 for ℓ ≥ 20) and the gradient is 0; a run that gets there is already broken and the
# logged KL says so.
K3_LOG_RATIO_CLAMP = 20.0


def log_ratio(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """ℓ = log π − log π_ref, computed in at least float32 (bf16 differences lose the KL)."""
    dtype = torch.promote_types(torch.promote_types(logprobs.dtype, ref_logprobs.dtype), torch.float32)
    return logprobs.to(dtype) - ref_logprobs.to(dtype)


def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """k1 = ℓ (unbiased, may be negative per token)."""
    return log_ratio


def kl_k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """k2 = ½ ℓ² (biased, ≥ 0)."""
    return 0.5 * log_ratio.square()


def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """k3 = (exp(−ℓ) − 1) + ℓ (unbiased, ≥ 0), with ℓ clamped to ±K3_LOG_RATIO_CLAMP.

    ``expm1`` keeps the small-ℓ case accurate; rounding can still leave values like −1e-9, which
    are clamped to 0 so k3 is never negative.
    """
    lr = log_ratio.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return (torch.expm1(-lr) + lr).clamp(min=0.0)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π: ``(B, T), (B, T) -> (B, T)``.

    ``estimator`` is a key of :data:`KL_ESTIMATORS` (``k1``, ``k2``, ``k3``; see the module
    docstring for the formulas). No mask is applied: padded positions hold whatever the inputs
    hold, so reduce with a mask. The result is float32 (float64 if an input is float64).
    Differentiable in both arguments.
    """
    fn = choose(KL_ESTIMATORS, estimator, "KL estimator")
    return fn(log_ratio(logprobs, ref_logprobs))


def kl_loss_term(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k2",
) -> tuple[torch.Tensor, Stats]:
    """KL to π_ref as a loss term (added with a weight β by the trainer), per-token mean.

        loss = masked_mean(k(log π − log π_ref), mask)        (per token over the batch's valid tokens)

    ``logprobs`` ``(B, T)`` are log π_θ of tokens **sampled from π_θ** (on-policy, with grad),
    ``ref_logprobs`` ``(B, T)`` log π_ref of the same tokens, ``mask`` ``(B, T)`` 1 on valid tokens.
    The default ``k2`` is the estimator whose expected gradient on such samples is ∇KL(π‖π_ref)
    (see the module docstring: k1's is 0, k3's is ∇KL(π_ref‖π)). Padded positions reach neither
    the loss nor a gradient. Stats: ``policy/kl_loss`` (the loss), ``policy/kl_k1`` (per-token
    mean log-ratio, an unbiased KL value to log beside it).
    """
    if logprobs.shape != mask.shape or ref_logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} and "
            f"mask {tuple(mask.shape)} must all be (B, T)"
        )
    valid = mask.bool()
    logprobs = torch.where(valid, logprobs, torch.zeros_like(logprobs))  # (B, T) garbage-free padding
    ref_logprobs = torch.where(valid, ref_logprobs, torch.zeros_like(ref_logprobs))
    per_token = kl_estimate(logprobs, ref_logprobs, estimator)  # (B, T)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "policy/kl_loss": loss.detach(),
            "policy/kl_k1": masked_mean(log_ratio(logprobs.detach(), ref_logprobs), mask),
        }
    return loss, stats


# ---------------------------------------------------------------------------------- controllers


class FixedKLController:
    """A constant β; ``update`` does nothing. Same interface as :class:`AdaptiveKLController`."""

    def __init__(self, beta: float):
        if not (beta >= 0.0 and math.isfinite(beta)):
            raise ConfigError(f"kl beta must be a finite number >= 0, got {beta!r}")
        self.beta = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Nothing to adapt; returns β."""
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKLController:
    """β adapted towards a target KL (Ziegler et al. 2019, §2.2).

    After each step with measured KL (the per-sequence mean of the summed per-token KL)::

        e = clip(KL / target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    ``n_steps`` is the number of sequences the KL was measured on (the rollout batch size), so
    ``horizon`` is in sequences: β can change by at most a factor e^(±0.2) every ``horizon``
    sequences. KL above target raises β (pulls π back towards π_ref); below target lowers it.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if not (init_beta > 0.0 and math.isfinite(init_beta)):
            raise ConfigError(f"adaptive kl init_beta must be a finite number > 0, got {init_beta!r}")
        if not (target > 0.0 and math.isfinite(target)):
            raise ConfigError(f"adaptive kl target must be a finite number > 0 (nats per sequence), got {target!r}")
        if not (horizon > 0.0 and math.isfinite(horizon)):
            raise ConfigError(f"adaptive kl horizon must be a finite number > 0 (sequences), got {horizon!r}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Apply one controller step with the measured KL over ``n_steps`` sequences; returns new β."""
        kl = float(current_kl)
        if not math.isfinite(kl):
            return self.beta  # a non-finite measurement must not poison β; the trainer reports it
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.beta = float(state["beta"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


KL_CONTROLLERS: dict[str, type] = {
    "fixed": FixedKLController,
    "adaptive": AdaptiveKLController,
}


def make_kl_controller(kind: str, **params: float) -> FixedKLController | AdaptiveKLController:
    """Build a controller by name: ``fixed(beta)`` or ``adaptive(init_beta, target, horizon)``."""
    cls = choose(KL_CONTROLLERS, kind, "KL controller")
    try:
        return cls(**params)
    except TypeError as exc:
        raise ConfigError(f"KL controller '{kind}': {exc}") from None


# ------------------------------------------------------------------------------ penalised reward


def reward_with_kl(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    estimator: str = "k1",
    clip_score: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token reward of RLHF-PPO (Ziegler et al. 2019; Stiennon et al. 2020).

        kl_t      = kl_estimate(logprobs, ref_logprobs, estimator)_t      (0 where mask = 0)
        reward_t  = −β · kl_t  +  [t is the last valid token] · score

    ``scores`` ``(B,)`` are the reward-model outputs, optionally clipped to ``[−clip_score,
    clip_score]``. The score is added at the **last valid response token** of each row (found
    from ``mask``, so right padding, left padding and rows of different lengths all work); a row
    with no valid token gets no score and zero rewards. Returns ``(rewards, kl)``, both ``(B, T)``
    and 0 on padding. This is not a loss (no stats): the inputs are rollout tensors, so callers
    pass detached logprobs and the rewards are constants for GAE.
    """
    if scores.dim() != 1 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"scores must be (B,) = ({mask.shape[0]},), got {tuple(scores.shape)}")
    if logprobs.shape != mask.shape or ref_logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, ref_logprobs {tuple(ref_logprobs.shape)} and "
            f"mask {tuple(mask.shape)} must all be (B, T)"
        )
    valid = mask.bool()  # (B, T)
    kl = kl_estimate(logprobs, ref_logprobs, estimator)  # (B, T)
    kl = torch.where(valid, kl, torch.zeros_like(kl))
    rewards = -beta * kl  # (B, T)

    scores = scores.to(rewards.dtype)
    if clip_score is not None:
        scores = scores.clamp(-clip_score, clip_score)
    T = mask.shape[-1]
    positions = torch.arange(T, device=mask.device).expand_as(valid)  # (B, T)
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(-1)  # (B,), -1 if empty
    has_token = last >= 0  # (B,)
    rewards = rewards.scatter_add(
        -1,
        last.clamp(min=0).unsqueeze(-1),  # (B, 1)
        torch.where(has_token, scores, torch.zeros_like(scores)).unsqueeze(-1),  # (B, 1)
    )
    return rewards, kl
