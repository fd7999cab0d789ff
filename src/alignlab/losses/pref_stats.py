"""Stats and input checks shared by every pairwise loss (DPO family and reward models).

Stat keys (detached 0-d tensors, the same wherever they apply; see ``alignlab.runs.METRICS``):

* ``rewards/chosen``, ``rewards/rejected`` — mean reward of chosen / rejected responses (reward
  model: its score; DPO family: the implicit reward β·log π_θ/π_ref, or β·mean log-prob for the
  reference-free losses),
* ``rewards/margin`` — mean of chosen minus rejected,
* ``rewards/accuracy`` — fraction of pairs whose chosen reward is higher; **a tie counts 1/2**, so
  a policy equal to its reference reads 0.5 (chance), not 0,
* ``logps/chosen``, ``logps/rejected`` — mean policy ``seq_logps`` (summed over tokens),
* ``logratio/mean`` — mean of log π_θ − log π_ref (summed per sequence) over the chosen and
  rejected responses. These are offline responses, not samples of π_θ, so this is **not** a KL
  estimate: it is usually negative, since DPO lowers the log-prob of both.
"""

from __future__ import annotations

import torch

from alignlab.errors import ConfigError
from alignlab.losses.registry import Stats


def pairwise_accuracy(margins: torch.Tensor) -> torch.Tensor:
    """Fraction of ``margins > 0``, a tie (margin == 0) counting 1/2. ``(N,) -> ()``."""
    m = margins.detach()
    return ((m > 0).to(m.dtype) + 0.5 * (m == 0).to(m.dtype)).mean()


def reward_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> Stats:
    """``rewards/{chosen,rejected,margin,accuracy}`` over N pairs, rewards each ``(N,)``."""
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    margins = chosen - rejected  # (N,)
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margin": margins.mean(),
        "rewards/accuracy": pairwise_accuracy(margins),
    }


def logp_stats(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> Stats:
    """``logps/chosen``, ``logps/rejected``: mean policy seq_logps, each ``(B,) -> ()``."""
    return {
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }


def logratio_stat(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor) -> Stats:
    """``logratio/mean``: mean of log π_θ − log π_ref over the 2B responses (per sequence)."""
    return {"logratio/mean": (0.5 * (chosen_logratios.mean() + rejected_logratios.mean())).detach()}


def check_same_shape(**tensors: torch.Tensor | None) -> None:
    """All given tensors must be 1-D with one shape; a silent (B,1) vs (B,) broadcast is a bug."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"preference inputs must all have the same shape (B,); got {shapes}")


def check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(f"beta must be > 0 (the implicit-reward temperature); got {beta}")
