"""alignlab: align language models with human preferences.

``import alignlab`` is light: the training entry points are imported on first use.

    >>> import alignlab
    >>> cfg = alignlab.SFTConfig()            # every knob, with defaults
    >>> alignlab.train_sft(cfg)               # same function `alignlab sft` calls
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "SFTConfig": "alignlab.config",
    "RewardConfig": "alignlab.config",
    "DPOConfig": "alignlab.config",
    "PPOConfig": "alignlab.config",
    "load_config": "alignlab.config",
    "train_sft": "alignlab.trainers.sft",
    "train_reward": "alignlab.trainers.reward",
    "train_dpo": "alignlab.trainers.dpo",
    "train_ppo": "alignlab.trainers.ppo",
    "AlignlabError": "alignlab.errors",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alignlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
