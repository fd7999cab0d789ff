"""Config machinery: dataclass fields with help (``knob``), YAML and ``key=value`` parsing, validation.

* ``load_config(SFTConfig, "file.yaml", ["train.lr=1e-4", "lora.r=8"])`` builds one.
* An override key may be dotted (``train.lr``) or, when unambiguous, just the leaf (``lr``).
* Unknown keys are a :class:`ConfigError` naming the key and the closest valid one.
* Values are parsed as YAML scalars and checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A config field with its help text (shown by ``--help``)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


# ----------------------------------------------------------------------------- machinery
def leaf_keys(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """All dotted leaf keys of a config class, e.g. ``{"train.lr": Field, ...}``."""
    out: dict[str, dataclasses.Field] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            out.update(leaf_keys(t, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def describe(cls: type) -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every leaf: what ``--help`` prints."""
    rows = []
    defaults = to_dict(cls())
    for key, f in leaf_keys(cls).items():
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        rows.append((key, f.metadata.get("help", ""), value))
    return rows


def _suggest(key: str, valid: list[str]) -> str:
    """The closest valid key to ``key``: by the whole dotted key, else by its last part."""
    hint = did_you_mean(key, valid)
    if hint:
        return hint
    leaf = key.split(".")[-1]
    same_leaf = [v for v in valid if v.split(".")[-1] == leaf][:1]
    return f"; did you mean '{same_leaf[0]}'?" if same_leaf else did_you_mean(leaf, valid)


def has_key(cls: type, key: str) -> bool:
    """True when ``key`` (dotted, or a unique leaf) names a setting of ``cls``."""
    leaves = list(leaf_keys(cls))
    return key in leaves or sum(k.endswith("." + key) for k in leaves) == 1


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
        if isinstance(value, bool):
            raise ConfigError(
                f"{where}'{key}': expected a string, got {value!r} (YAML reads an unquoted yes, no, on, off, true or false as a boolean: quote it)"
            )
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
    valid = list(leaf_keys(cls, prefix)) + [prefix + n for n in names]
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in names:
            raise ConfigError(f"{where}unknown key '{prefix}{key}'{_suggest(prefix + str(key), valid)}")
        t = hints[key]
        if dataclasses.is_dataclass(t):
            # a partial section keeps this stage's own defaults for the keys it does not name
            fld = next(f for f in dataclasses.fields(cls) if f.name == key)
            if isinstance(value, dict) and fld.default_factory is not dataclasses.MISSING:
                value = _merge(to_dict(fld.default_factory()), value)
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
    leaves = list(leaf_keys(cls))
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
    leaves = leaf_keys(cls)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        key = _resolve_key(cls, key.strip())
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        kind = str(leaves[key].type)
        if isinstance(value, bool) and kind.startswith("str"):
            value = raw.strip()  # a string field takes the word as typed (YAML would read `off` as false)
        optional = "None" in kind  # `key=none` empties an optional field; elsewhere "none" is a word
        if optional and raw.strip().lower() in ("none", "null", "~"):
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


def load_config(
    cls: type, path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None
):
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

    from alignlab.runs import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


_CHOICES = {
    "train.scheduler": ("cosine", "linear", "constant"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.gradient_checkpointing": ("auto", "none", "selective", "full"),
}


def validate(cfg: Any) -> None:
    """Value checks that types alone cannot express; raises ConfigError naming the key."""
    flat = flatten(to_dict(cfg))
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


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_diff(a: Any, b: Any, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (used to refuse a resume into another run)."""
    fa, fb = flatten(a if isinstance(a, dict) else to_dict(a)), flatten(b if isinstance(b, dict) else to_dict(b))
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if k not in ignore and fa.get(k) != fb.get(k)]
