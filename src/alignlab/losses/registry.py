"""Choosing a variant by name from a registry dict, with an error a user can act on.

Every registry in :mod:`alignlab.losses` (``PREFERENCE_LOSSES``, ``REWARD_LOSSES``,
``KL_ESTIMATORS``, ``POLICY_LOSSES``, ...) is a plain dict; :func:`choose` is the one lookup, so an
unknown name reads the same everywhere: it names the closest valid entry and lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from alignlab.errors import ConfigError, did_you_mean

Stats = dict[str, torch.Tensor]
"""What every loss returns beside its loss: detached 0-d tensors keyed by metric name."""


def choose(registry: Mapping[str, Any], name: str, what: str) -> Any:
    """``registry[name]``, or a ConfigError that names the closest valid name and lists them all."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        valid = sorted(registry)
        hint = did_you_mean(name, valid, cutoff=0.0)
        raise ConfigError(f"unknown {what} '{name}'{hint} (valid: {', '.join(valid)})") from None
