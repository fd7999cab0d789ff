"""Configuration: one dataclass per stage, the same object from YAML, the command line and Python.

A stage config is a tree of small dataclasses (``model``, ``data``, ``train`` and the stage's own
knobs). Each field carries a one-line help text (``--help`` prints them) and a default.

* ``load_config(SFTConfig, "file.yaml", ["train.lr=1e-4", "lora.r=8"])`` builds one.
* An override key may be dotted (``train.lr``) or, when unambiguous, just the leaf (``lr``).
* Unknown keys are a :class:`ConfigError` naming the key and the closest valid one.
* Values are parsed as YAML scalars and checked against the field's type.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A config field with its help text (shown by ``--help``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------- shared sections
@dataclass
class LoraConfig:
    """Low-rank adapters (peft). With LoRA the reference model is the policy with adapters off."""

    enabled: bool = knob(False, "train LoRA adapters instead of all weights")
    r: int = knob(16, "adapter rank")
    alpha: int = knob(32, "adapter scaling alpha (effective scale alpha/r)")
    dropout: float = knob(0.05, "dropout on the adapter input")
    target_modules: list[str] = knob(
        help="module names that get adapters",
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


@dataclass
class ModelConfig:
    """Which network to train and how to hold it."""

    name_or_path: str = knob(
        "smollm2-135m",
        "a preset (smollm2-135m, tiny), a local Hugging Face folder, or a hub id already in the local cache",
    )
    dtype: str = knob("auto", "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16 or float16")
    device: str = knob("auto", "auto (cuda if available), cpu or cuda[:N]")
    trust_remote_code: bool = knob(False, "allow the model folder's own Python code to run (off: safe)")
    gradient_checkpointing: bool = knob(False, "recompute activations in backward to save memory")
    lora: LoraConfig = knob(help="LoRA adapters", factory=LoraConfig)


@dataclass
class DataConfig:
    """Where the records come from and how they are cut into tokens."""

    train: str = knob("demo:sft", "training data: a file (jsonl, json, csv, parquet), a datasets folder, or demo:<name>")
    eval: str | None = knob(None, "held-out data; when empty, eval_fraction of train is held out")
    eval_fraction: float = knob(0.1, "fraction of train held out for evaluation when eval is empty")
    limit: int | None = knob(None, "use at most this many training records")
    max_length: int = knob(512, "tokens per example (prompt + response); prompts are cut from the left, responses from the right")
    max_prompt_length: int = knob(384, "prompt tokens kept at most (cut from the left, keeping the latest turns)")
    packing: bool = knob(False, "pack several SFT examples into one row (position ids restart per example)")


@dataclass
class TrainConfig:
    """The shared training loop: optimiser, schedule, checkpoints and logging."""

    output_dir: str = knob("runs", "folder that holds run folders")
    run_name: str = knob("default", "name of this run's folder under output_dir")
    seed: int = knob(0, "seed for weights of random models, data order, dropout and sampling")
    lr: float = knob(2e-4, "peak learning rate")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    adam_beta1: float = knob(0.9, "AdamW beta1")
    adam_beta2: float = knob(0.999, "AdamW beta2")
    adam_eps: float = knob(1e-8, "AdamW epsilon")
    scheduler: str = knob("cosine", "learning-rate decay after warmup: cosine, linear or constant")
    warmup_steps: int = knob(5, "optimizer steps of linear warmup from 0")
    max_steps: int = knob(0, "optimizer steps to run; 0 means `epochs` passes over the data")
    epochs: float = knob(1.0, "passes over the training data when max_steps is 0")
    batch_size: int = knob(8, "examples per micro-batch")
    grad_accum: int = knob(1, "micro-batches per optimizer step")
    max_grad_norm: float = knob(1.0, "clip the global gradient norm to this (0: no clipping)")
    eval_every: int = knob(0, "evaluate every N optimizer steps (0: only at the end)")
    eval_batches: int = knob(0, "evaluate on at most N batches (0: all)")
    save_every: int = knob(0, "checkpoint every N optimizer steps (0: only at the end)")
    keep_last: int = knob(2, "checkpoints kept (older ones are deleted after a newer one is complete)")
    log_every: int = knob(1, "write metrics every N optimizer steps")
    tensorboard: bool = knob(False, "also write TensorBoard events (needs the tensorboard package)")
    max_bad_steps: int = knob(3, "halt after this many non-finite losses or gradients in a row")
    resume: bool = knob(False, "continue from the newest complete checkpoint of this run")
    progress: bool = knob(True, "show a progress bar")
    num_samples: int = knob(4, "responses sampled from held-out prompts after training (0: none)")


# ----------------------------------------------------------------------------- stage configs
@dataclass
class SFTConfig:
    """Supervised fine-tuning: cross-entropy on response tokens only."""

    model: ModelConfig = knob(help="the policy", factory=ModelConfig)
    data: DataConfig = knob(help="SFT records", factory=DataConfig)
    train: TrainConfig = knob(help="the training loop", factory=TrainConfig)


@dataclass
class GenerateConfig:
    """Sampling from a model (``alignlab generate``)."""

    model: ModelConfig = knob(help="the model to sample from", factory=ModelConfig)
    prompt: list[str] = knob(help="one or more user prompts", factory=list)
    max_new_tokens: int = knob(128, "tokens generated at most per response")
    temperature: float = knob(0.7, "sampling temperature (0: greedy)")
    top_p: float = knob(0.9, "nucleus sampling mass")
    seed: int = knob(0, "sampling seed")


STAGE_CONFIGS: dict[str, type] = {"sft": SFTConfig, "generate": GenerateConfig}


# ----------------------------------------------------------------------------- machinery
def _leaf_keys(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """All dotted leaf keys of a config class, e.g. ``{"train.lr": Field, ...}``."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(_leaf_keys(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def describe(cls: type) -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf: what ``--help`` prints."""
    rows = []
    defaults = to_dict(cls())
    for key, f in _leaf_keys(cls).items():
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        rows.append((key, f.metadata.get("help", ""), value))
    return rows


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not close:
        leaf = key.split(".")[-1]
        close = [v for v in valid if v.split(".")[-1] == leaf][:1] or difflib.get_close_matches(
            leaf, valid, n=1, cutoff=0.5
        )
    return f"; did you mean '{close[0]}'?" if close else ""


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Check ``value`` against ``annotation`` (int, float, bool, str, list[T], T | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, where)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}'{key}': expected a list, got {value!r}")
        return [_coerce(v, item_type, key, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - a config class with an unsupported annotation is a bug here
        raise TypeError(f"unsupported config type {annotation!r} for {key}")
    expected = _TYPE_NAMES.get(annotation, str(annotation))
    raise ConfigError(f"{where}'{key}': expected {expected}, got {value!r}")


def from_dict(cls: type, data: dict, *, where: str = "", prefix: str = "") -> Any:
    """Build ``cls`` from a nested dict, rejecting unknown keys with a suggestion."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}'{prefix.rstrip('.') or 'config'}': expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    valid = list(_leaf_keys(cls, prefix)) + [prefix + n for n in names]
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise ConfigError(f"{where}unknown key '{prefix}{key}'{_suggest(prefix + str(key), valid)}")
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = from_dict(t, value, where=where, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, t, prefix + key, where)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    """A plain nested dict (YAML-safe) of a config object."""
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def _resolve_key(cls: type, key: str) -> str:
    """Map a possibly short override key (``lr``) to its dotted form (``train.lr``)."""
    leaves = list(_leaf_keys(cls))
    if key in leaves:
        return key
    matches = [k for k in leaves if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"override key '{key}' is ambiguous: use one of {', '.join(matches)}")
    raise ConfigError(f"unknown key '{key}'{_suggest(key, leaves)}")


def parse_overrides(cls: type, overrides: list[str]) -> dict:
    """``["train.lr=1e-4", "lora.enabled=true"]`` -> nested dict of parsed values."""
    import yaml

    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = _resolve_key(cls, key.strip())
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if raw.strip().lower() in ("none", "null", "~"):
            value = None
        _set_dotted(tree, key, value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file; errors name the file and line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not valid UTF-8 at byte {e.start}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """Defaults <- ``base`` dict <- YAML file <- ``key=value`` overrides, validated into ``cls``."""
    tree: dict = dict(base or {})
    where = ""
    if path is not None:
        tree = _merge(tree, read_yaml(path))
        where = f"{path}: "
    cfg = from_dict(cls, tree, where=where)
    if overrides:
        cfg = from_dict(cls, _merge(to_dict(cfg), parse_overrides(cls, overrides)))
    validate(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


_CHOICES = {
    "train.scheduler": ("cosine", "linear", "constant"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
}


def validate(cfg: Any) -> None:
    """Value checks that types alone cannot express; raises ConfigError naming the key."""
    flat = _flatten(to_dict(cfg))
    for key, choices in _CHOICES.items():
        if key in flat and flat[key] not in choices:
            raise ConfigError(f"'{key}' must be one of {', '.join(choices)}; got {flat[key]!r}")
    positive = ["train.batch_size", "train.grad_accum", "data.max_length", "train.keep_last", "train.max_bad_steps"]
    for key in positive:
        if key in flat and flat[key] < 1:
            raise ConfigError(f"'{key}' must be at least 1; got {flat[key]}")
    if "train.lr" in flat and not flat["train.lr"] > 0:
        raise ConfigError(f"'train.lr' must be positive; got {flat['train.lr']}")
    if "data.eval_fraction" in flat and not 0 <= flat["data.eval_fraction"] < 1:
        raise ConfigError(f"'data.eval_fraction' must be in [0, 1); got {flat['data.eval_fraction']}")
    if "data.max_prompt_length" in flat and flat["data.max_prompt_length"] >= flat["data.max_length"]:
        raise ConfigError("'data.max_prompt_length' must be smaller than 'data.max_length' so responses keep tokens")
    check = getattr(cfg, "check", None)
    if callable(check):
        check()


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (used to refuse a resume into another run)."""
    fa, fb = _flatten(a if isinstance(a, dict) else to_dict(a)), _flatten(b if isinstance(b, dict) else to_dict(b))
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if k not in ignore and fa.get(k) != fb.get(k)]
