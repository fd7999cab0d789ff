"""Several objectives evaluated side by side: named gold specs, each scored on every response.

``EvalConfig.objectives`` is a list of ``name=spec`` items (``helpful=demo``, ``concise=concise``,
``lower=char_fraction(chars=abc)``); a bare spec is its own name. Each spec is a gold spec of
:mod:`alignlab.gold` (so weighted sums like ``sentiment+0.5*concise`` work). Rows carry the values
as ``row["objectives"] = {name: float}``; :func:`alignlab.eval.evaluate.evaluate_run` reports each
objective's mean and its paired gain over the baseline with intervals, per policy.

Torch-free: the report and config validation import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from alignlab.errors import ConfigError

_NAMED = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*=(.+)$")


def parse_objectives(items: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``["helpful=demo", "concise"]`` -> ``{"helpful": "demo", "concise": "concise"}`` (order kept).

    A mapping is taken as ``{name: spec}``. Names must be unique and specs non-empty; whether a
    spec names a real gold reward is checked by :func:`alignlab.gold.get_gold` when it is loaded.
    """
    pairs = list(items.items()) if isinstance(items, Mapping) else [_split(str(item)) for item in items]
    out: dict[str, str] = {}
    for name, spec in pairs:
        if not spec.strip():
            raise ConfigError(f"'objectives': '{name}' has an empty gold spec (write name=spec, e.g. concise=concise)")
        if name in out:
            raise ConfigError(f"'objectives': the name '{name}' is given twice; give each objective its own name")
        out[name] = spec.strip()
    return out


def _split(item: str) -> tuple[str, str]:
    m = _NAMED.match(item)
    if m and "(" not in m.group(1):
        return m.group(1), m.group(2).strip()
    return item.strip(), item.strip()


def load_objectives(items: Sequence[str] | Mapping[str, str]) -> dict[str, object]:
    """``{name: gold function}`` for the objectives; a bad spec is a ConfigError naming the objective."""
    from alignlab.gold import get_gold

    out = {}
    for name, spec in parse_objectives(items).items():
        try:
            out[name] = get_gold(spec)
        except ConfigError as e:
            raise ConfigError(f"'objectives': {name}={spec}: {e}") from None
    return out
