"""Profiles: YAML files with one section per stage (``sft:``, ``reward:``, ``dpo:``, ``ppo:`` ...).

Built-in profiles live in ``alignlab/configs/``: ``full`` (a GPU and a larger model, full fine-tuning),
``overopt`` (over-optimisation made visible on a tiny model), ``quick`` (the main job: the whole pipeline on
SmolLM2-135M-Instruct with LoRA on the demo data, minutes on a laptop CPU; ``default`` is another
name for it) and ``tiny`` (a random tiny model, seconds: smoke tests).
A profile may also be a path to your own YAML file of the same shape.

Besides the stage sections a profile may set the run's own keys (``alignlab.pipeline.PROFILE_KEYS``):
``rounds: N`` (default 1) runs iterated RLHF, N rounds of label → reward → ppo/dpo, each round's
labels sampled from the newest policy; ``alignlab run ... rounds=3`` sets it from the command line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alignlab.errors import ConfigError, did_you_mean

ALIASES = {"default": "quick"}


def builtin_profiles() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("alignlab.configs").iterdir() if p.name.endswith(".yaml"))


def load_profile(name: str) -> dict:
    from alignlab.config import read_yaml

    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return read_yaml(path)
    name = ALIASES.get(name, name)
    if name not in builtin_profiles():
        raise ConfigError(
            f"unknown profile '{name}'{did_you_mean(name, builtin_profiles())}: built-in profiles are "
            f"{', '.join(builtin_profiles())}, or give a YAML file"
        )
    with resources.as_file(resources.files("alignlab.configs") / f"{name}.yaml") as p:
        return read_yaml(p)
