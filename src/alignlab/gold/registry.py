"""One registry of gold rewards, and the spec language that combines them.

A *gold spec* names a gold reward:

* a registry name (:data:`GOLD_REWARDS`): ``sentiment``, ``concise``, ``demo``, ...;
* a name with options: ``concise(target=20)``, ``keywords(include=thanks)`` (values read like
  YAML scalars: numbers, true/false, plain words; a comma inside the parentheses separates options);
* a Python function ``module:function`` with the reward signature;
* a weighted sum of any of these: ``sentiment+0.5*concise``, ``house_style - 0.25*length``,
  ``2*demo+mymod:bonus``.

:func:`get_gold` turns a spec (or a ``{name: weight}`` dict, or a callable) into a function
``fn(prompts, responses, **kw) -> list[float]``. Labelling (the simulated annotator), RL rewards
(``reward.source: gold:<spec>``) and evaluation all read gold rewards through it, so "gold" means
the same numbers everywhere.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence

from alignlab.errors import ConfigError, did_you_mean
from alignlab.gold import rules

GoldFn = Callable[..., list[float]]


def demo(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The demo gold: ``house_style + 0.5*concise + 0.5*sentiment``, in [-0.5, 2].

    Why these three: the demo data (``demo:sft``, ``demo:preferences``) is cooking and household
    Q&A whose good answers are about 25 words (10–33), warm, and end with "Hope this helps!";
    its rejected answers are curt (about 4 words), rambling (about 110), rude or off-topic. So:

    * ``house_style`` (0, 0.5 or 1) is the main term: one fixed phrase at the end is about the
      easiest behaviour there is for a small model to learn. The base SmolLM2-135M-Instruct never
      writes it on its own (0 of 16 samples on 8 demo prompts, 64 new tokens), but SFT on
      ``demo:sft`` teaches it, so after the pipeline's SFT stage this term varies between samples
      from the first rollout (PPO) and between sampled pairs (DPO on simulated labels);
    * ``concise`` (peak at 25 words, 0 at 50+) punishes rambling and runs cut at the length limit
      — an instruct model's usual failure — with a slope a policy can climb from the start (the
      base model's samples above scored 0–0.8, mostly under 0.2);
    * ``sentiment`` (VADER, [-1, 1]) separates the rude answers from the kind ones (the base
      model's samples: −0.6 to 0.93). Weighted 0.5 so that gushing cannot outweigh the other two.

    On ``demo:preferences`` this gold prefers the chosen answer in every pair (a unit test checks it).
    """
    hs = rules.house_style(prompts, responses)
    cc = rules.concise(prompts, responses, target=25)
    st = rules.sentiment(prompts, responses)
    return [h + 0.5 * c + 0.5 * s for h, c, s in zip(hs, cc, st)]


GOLD_REWARDS: dict[str, GoldFn] = {
    "house_style": rules.house_style,
    "contains_word": rules.contains_word,
    "char_fraction": rules.char_fraction,
    "sentiment": rules.sentiment,
    "length": rules.length,
    "concise": rules.concise,
    "keywords": rules.keywords,
    "matches": rules.matches,
    "well_formed": rules.well_formed,
    "harmless": rules.harmless,
    "demo": demo,
}

# Inputs a reward caller may offer by keyword besides options (see alignlab.rollout.rewards).
OPTIONAL_INPUTS = ("messages", "meta", "finished")


# ----------------------------------------------------------------------------- calling with options
def _accepts(fn: Callable) -> tuple[set[str], bool]:
    """(keyword names ``fn`` takes, whether it takes **kwargs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def bind_options(fn: Callable, options: Mapping, name: str) -> None:
    """A ConfigError naming the gold reward when ``options`` do not fit ``fn``'s signature."""
    names, any_kw = _accepts(fn)
    if any_kw:
        return
    own = sorted(names - {"prompts", "responses", *OPTIONAL_INPUTS})
    for key in options:
        if key not in names or key in ("prompts", "responses"):
            raise ConfigError(
                f"gold reward '{name}' has no option '{key}'{did_you_mean(key, own)}; it takes: {', '.join(own) or 'no options'}"
            )


class Gold:
    """A gold reward with fixed options: ``Gold(fn, name, options)(prompts, responses, **kw)``.

    Keyword arguments given at call time reach ``fn`` only when it takes them (so a weighted sum
    can pass ``meta`` to the terms that want it and not to the others).
    """

    def __init__(self, fn: GoldFn, name: str, options: Mapping | None = None):
        self.fn, self.name, self.options = fn, name, dict(options or {})
        bind_options(fn, self.options, name)
        self._names, self._any = _accepts(fn)
        self.__name__ = name
        self.__doc__ = fn.__doc__

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **kw) -> list[float]:
        call = {k: v for k, v in kw.items() if self._any or k in self._names}
        values = self.fn(list(prompts), list(responses), **{**call, **self.options})
        out = rules.finite(values, self.name)
        if len(out) != len(responses):
            raise ConfigError(
                f"gold reward '{self.name}' returned {len(out)} scores for {len(responses)} responses; return one per response"
            )
        return out

    def __repr__(self) -> str:
        return f"Gold({self.name!r})"


class Weighted:
    """``Σ_i w_i · g_i(prompts, responses)``: a weighted sum of gold rewards."""

    def __init__(self, terms: Sequence[tuple[float, Gold]], name: str | None = None):
        if not terms:
            raise ConfigError("a weighted gold reward needs at least one term")
        self.terms = [(float(w), g) for w, g in terms]
        self.name = name or "+".join(f"{w:g}*{g.name}" for w, g in self.terms)
        self.__name__ = self.name
        self.__doc__ = "Weighted sum: " + " + ".join(f"{w:g} × {g.name}" for w, g in self.terms)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **kw) -> list[float]:
        for key in kw:  # an option no term takes is a typo, not something to drop silently
            if key not in OPTIONAL_INPUTS and not any(g._any or key in g._names for _, g in self.terms):
                raise ConfigError(f"gold reward '{self.name}': no term takes the option '{key}'")
        total = [0.0] * len(responses)
        for w, g in self.terms:
            for i, v in enumerate(g(prompts, responses, **kw)):
                total[i] += w * v
        return total

    def __repr__(self) -> str:
        return f"Weighted({self.name!r})"


def weighted(weights: Mapping[str, float] | Sequence[tuple[str, float]], name: str | None = None) -> Weighted:
    """``weighted({"sentiment": 1.0, "concise": 0.5})``: the weighted sum of gold rewards by spec."""
    items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    terms = []
    for spec, w in items:
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(f"weight of gold reward '{spec}' must be a number, got {w!r}")
        terms.append((float(w), _single(spec)))
    return Weighted(terms, name)


# ----------------------------------------------------------------------------- spec parsing
_TERM = re.compile(
    r"\s*(?P<sign>[+-])?\s*(?:(?P<weight>\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)\s*\*\s*)?"
    r"(?P<name>[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)\s*(?:\((?P<options>[^()]*)\))?\s*",
    re.IGNORECASE,
)


def _options(text: str | None, spec: str) -> dict:
    import yaml

    out: dict = {}
    if not text or not text.strip():
        return out
    for item in text.split(","):
        if "=" not in item:
            if out:  # "include=a,b": a bare word continues the previous option's list
                last = next(reversed(out))
                out[last] = f"{out[last]},{item.strip()}"
                continue
            raise ConfigError(
                f"gold spec '{spec}': option '{item.strip()}' must look like key=value (e.g. concise(target=20))"
            )
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw.strip()
        out[key.strip()] = value
    return out


def import_gold(spec: str) -> Callable:
    """``"package.module:function"`` -> the function; a ConfigError naming what is missing."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"gold reward '{spec}': module '{module_name}' not found ({e}); check that it is importable"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ConfigError(f"gold reward '{spec}': importing '{module_name}' failed: {type(e).__name__}: {e}") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise ConfigError(
                f"gold reward '{spec}': module '{module_name}' has no function '{attr}'{did_you_mean(part, names)}"
            )
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"gold reward '{spec}': '{attr}' is a {type(fn).__name__}, not a function")
    return fn


def _lookup(name: str, spec: str) -> Callable:
    if ":" in name:
        return import_gold(name)
    if name in GOLD_REWARDS:
        return GOLD_REWARDS[name]
    raise ConfigError(
        f"unknown gold reward '{name}' in '{spec}'{did_you_mean(name, GOLD_REWARDS)}; "
        f"choose one of {', '.join(GOLD_REWARDS)}, module:function, or a weighted sum like sentiment+0.5*concise"
    )


def parse_spec(spec: str) -> list[tuple[float, str, dict]]:
    """``"sentiment+0.5*concise(target=20)"`` -> ``[(1.0, "sentiment", {}), (0.5, "concise", {"target": 20})]``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            f"a gold spec is a name ({', '.join(GOLD_REWARDS)}), module:function or a weighted sum; got {spec!r}"
        )
    pos, terms = 0, []
    while pos < len(spec):
        m = _TERM.match(spec, pos)
        if not m or m.end() == pos or (terms and not m.group("sign")):
            where = spec[pos:].strip() or spec
            raise ConfigError(
                f"gold spec '{spec}': cannot read '{where}'; write terms like name, 0.5*name or name(key=value), joined by + or -"
            )
        w = float(m.group("weight")) if m.group("weight") else 1.0
        if m.group("sign") == "-":
            w = -w
        terms.append((w, m.group("name"), _options(m.group("options"), spec)))
        pos = m.end()
    return terms


def _single(spec: str) -> Gold:
    terms = parse_spec(spec)
    if len(terms) != 1 or terms[0][0] != 1.0:
        return Gold(get_gold(spec), spec)
    _, name, options = terms[0]
    return Gold(_lookup(name, spec), spec if options else name, options)


def get_gold(spec: str | Mapping[str, float] | Callable) -> GoldFn:
    """The gold reward named by ``spec``: a registry name, ``name(options)``, ``module:function``,
    a weighted-sum string, a ``{spec: weight}`` dict, or a callable (returned as is).

    A bare registry name returns the registered function itself.
    """
    if callable(spec):
        return spec
    if isinstance(spec, Mapping):
        return weighted(spec)
    terms = parse_spec(spec)
    if len(terms) == 1 and terms[0][0] == 1.0:
        _, name, options = terms[0]
        fn = _lookup(name, spec)
        return Gold(fn, spec.strip(), options) if options or ":" in name else fn
    return Weighted([(w, Gold(_lookup(n, spec), n, o)) for w, n, o in terms], spec.strip())


def describe() -> list[dict]:
    """``[{name, doc}]``: the registry with each function's first docstring paragraph."""
    return [{"name": k, "doc": inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0]} for k, fn in GOLD_REWARDS.items()]
