"""Configuration: one dataclass per stage, the same object from YAML, the command line and Python.

A stage config is a tree of small dataclasses (``model``, ``data``, ``train`` and the stage's own
knobs). Each field carries a one-line help text (``--help`` prints them) and a default.

* :mod:`alignlab.config.sections` — the shared sections (model, LoRA, data, train, rollout, reward source);
* :mod:`alignlab.config.stages` — one class per stage (the pipeline table names them);
* :mod:`alignlab.config.parse` — ``knob``, YAML and ``key=value`` parsing, validation, errors.

``load_config(SFTConfig, "file.yaml", ["train.lr=1e-4", "lora.r=8"])`` builds one; an override key
may be dotted (``train.lr``) or, when unambiguous, just the leaf (``lr``); unknown keys are a
:class:`~alignlab.errors.ConfigError` naming the key and the closest valid one.
"""

from alignlab.config.parse import (
    config_diff,
    describe,
    flatten,
    from_dict,
    has_key,
    knob,
    leaf_keys,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
    to_dict,
    validate,
)
from alignlab.config.sections import DataConfig, LoraConfig, ModelConfig, RewardSourceConfig, RolloutConfig, TrainConfig
from alignlab.config.stages import (
    BestOfNConfig,
    DPOConfig,
    EvalConfig,
    GenerateConfig,
    GRPOConfig,
    LabelConfig,
    PPOConfig,
    ReportConfig,
    RewardConfig,
    RLOOConfig,
    SFTConfig,
)

__all__ = [
    "BestOfNConfig",
    "DPOConfig",
    "EvalConfig",
    "LabelConfig",
    "ReportConfig",
    "DataConfig",
    "GRPOConfig",
    "GenerateConfig",
    "LoraConfig",
    "ModelConfig",
    "PPOConfig",
    "RLOOConfig",
    "RewardConfig",
    "RewardSourceConfig",
    "RolloutConfig",
    "SFTConfig",
    "TrainConfig",
    "config_diff",
    "describe",
    "flatten",
    "from_dict",
    "has_key",
    "knob",
    "leaf_keys",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "to_dict",
    "validate",
]
