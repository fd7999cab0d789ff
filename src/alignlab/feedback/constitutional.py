"""Constitutional AI feedback (Bai et al. 2022): critiques, revisions and AI preferences from principles.

Principles come from a YAML file (default: ``principles.yaml`` beside this module; see its header
for the fields). For each prompt one principle is drawn (seeded), and:

* **SL-CAI** (:func:`critique_and_revise`): the model answers the prompt; is asked, in the same
  conversation, to critique its answer against the principle; then to revise it. Each revision
  becomes an SFT row ``{prompt, response, principle, critique, original, source, model, seed}``
  (``response`` = the revision, ``original`` = the first answer), which ``alignlab.data``
  reads as an ``sft`` row as it is.
* **RLAIF** (:func:`ai_preferences`): two answers are sampled and a :class:`~alignlab.feedback.judge.Judge`
  picks one with the principle's ``choice`` as its criterion, asking in both orders. Each pick
  becomes a preference row ``{prompt, chosen, rejected, principle, source, judge, model,
  confidence, position_consistent}``.

Generation goes through :class:`alignlab.rollout.generate.TransformersEngine`. A critique or
revision that comes back empty is dropped and counted (a row must have text to train on).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from alignlab.errors import ConfigError

DEFAULT_PRINCIPLES = "principles.yaml"
FIELDS = ("name", "critique", "revision", "choice")


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    """the request for a critique of the last answer"""
    revision: str
    """the request to rewrite the answer after the critique"""
    choice: str
    """the judge's criterion when choosing between two answers"""


def load_principles(path: str | os.PathLike | None = None) -> list[Principle]:
    """Principles from a YAML file (``{principles: [{name, critique, revision, choice}, ...]}`` or
    the bare list); errors name the file, the entry and the field."""
    import yaml

    if path is None:
        text = resources.files("alignlab.feedback").joinpath(DEFAULT_PRINCIPLES).read_text(encoding="utf-8")
        where = f"alignlab/feedback/{DEFAULT_PRINCIPLES}"
    else:
        where = os.fspath(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{where}: cannot read the principles file: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    items = data.get("principles") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"{where}: expected a non-empty list under 'principles' (each {{name, critique, revision, choice}})"
        )
    out, names = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: principles[{i}] must be a mapping with {', '.join(FIELDS)}")
        for key in FIELDS:
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise ConfigError(f"{where}: principles[{i}]: field '{key}' must be non-empty text")
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise ConfigError(
                f"{where}: principles[{i}]: unknown field '{unknown[0]}'; a principle has {', '.join(FIELDS)}"
            )
        if item["name"] in names:
            raise ConfigError(f"{where}: principles[{i}]: the name '{item['name']}' is used twice")
        names.add(item["name"])
        out.append(Principle(*(item[k].strip() for k in FIELDS)))
    return out


def conversation(prompt, *turns: str):
    """The prompt (a string or messages) followed by alternating assistant / user turns."""
    from alignlab.data.records import Message

    if isinstance(prompt, str):
        msgs = [Message("user", prompt)]
    else:
        msgs = [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in prompt]
    for i, text in enumerate(turns):
        msgs.append(Message("assistant" if i % 2 == 0 else "user", text))
    return tuple(msgs)


def _as_row_prompt(prompt):
    """A prompt as it goes into a row: a string as is, messages as dicts."""
    if isinstance(prompt, str):
        return prompt
    return [m if isinstance(m, dict) else m.as_dict() for m in prompt]


class Sampler:
    """Chat-formatted sampling through a :class:`TransformersEngine` (one seeded call per step)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.8,
        top_p: float = 1.0,
        batch_size: int = 16,
        name: str = "model",
    ):
        from alignlab.rollout.generate import TransformersEngine

        self.engine = TransformersEngine(model, tokenizer, batch_size=batch_size)
        self.tokenizer, self.name = tokenizer, name
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p

    def __call__(self, conversations: Sequence, seed: int) -> list[str]:
        from alignlab.data.tokenize import encode_prompt
        from alignlab.rollout.generate import SamplingParams

        ids = [encode_prompt(self.tokenizer, c) for c in conversations]
        params = SamplingParams(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=seed
        )
        return [g.text.strip() for g in self.engine.generate(ids, params)]


def _draw(principles: Sequence[Principle], n: int, seed: int) -> list[Principle]:
    if not principles:
        raise ConfigError("constitutional feedback needs at least one principle")
    idx = np.random.default_rng(seed).integers(len(principles), size=n)
    return [principles[int(i)] for i in idx]


def critique_and_revise(
    sampler: Sampler, prompts: Sequence, principles: Sequence[Principle], *, seed: int = 0
) -> tuple[list[dict], dict]:
    """SL-CAI rows for ``prompts`` (see the module docstring) and counts ``{prompts, rows, dropped_empty}``."""
    drawn = _draw(principles, len(prompts), seed)
    originals = sampler([conversation(p) for p in prompts], seed)
    critiques = sampler([conversation(p, o, pr.critique) for p, o, pr in zip(prompts, originals, drawn)], seed + 1)
    revisions = sampler(
        [conversation(p, o, pr.critique, c, pr.revision) for p, o, pr, c in zip(prompts, originals, drawn, critiques)],
        seed + 2,
    )
    rows, dropped = [], 0
    for p, pr, o, c, r in zip(prompts, drawn, originals, critiques, revisions):
        if not (o and c and r):
            dropped += 1
            continue
        rows.append(
            {
                "prompt": _as_row_prompt(p),
                "response": r,
                "principle": pr.name,
                "critique": c,
                "original": o,
                "critique_request": pr.critique,
                "revision_request": pr.revision,
                "source": "constitutional",
                "model": sampler.name,
                "seed": seed,
            }
        )
    return rows, {"prompts": len(prompts), "rows": len(rows), "dropped_empty": dropped}


def ai_preferences(
    sampler: Sampler,
    judge,
    prompts: Sequence,
    principles: Sequence[Principle],
    *,
    seed: int = 0,
    responses: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[dict], dict]:
    """RLAIF preference rows: two sampled answers per prompt (or the given ``responses`` pairs),
    picked by ``judge`` under each prompt's drawn principle. Returns rows and counts
    ``{prompts, rows, dropped, position_consistency}`` (dropped: a pair with an empty or repeated answer)."""
    drawn = _draw(principles, len(prompts), seed)
    if responses is None:
        conv = [conversation(p) for p in prompts]
        first, second = sampler(conv, seed + 10), sampler(conv, seed + 11)
    else:
        first, second = [r[0] for r in responses], [r[1] for r in responses]
    rows, dropped, consistent, judged = [], 0, 0, 0
    for name in sorted({pr.name for pr in drawn}):
        idx = [
            i
            for i, pr in enumerate(drawn)
            if pr.name == name and first[i].strip() and second[i].strip() and first[i].strip() != second[i].strip()
        ]
        if not idx:
            continue
        criterion = next(pr.choice for pr in drawn if pr.name == name)
        cmp = judge.compare([prompts[i] for i in idx], [first[i] for i in idx], [second[i] for i in idx], criterion)
        judged += len(idx)
        consistent += int(cmp.consistent.sum())
        for j, i in enumerate(idx):
            p = float(cmp.prob[j])
            win = p >= 0.5
            rows.append(
                {
                    "prompt": _as_row_prompt(prompts[i]),
                    "chosen": first[i] if win else second[i],
                    "rejected": second[i] if win else first[i],
                    "principle": name,
                    "source": "rlaif",
                    "judge": getattr(judge, "name", "judge"),
                    "model": sampler.name,
                    "confidence": round(p if win else 1 - p, 6),
                    "position_consistent": bool(cmp.consistent[j]),
                    "seed": seed,
                    "_order": i,
                }
            )
    dropped = len(prompts) - judged
    rows.sort(key=lambda r: r.pop("_order"))
    stats = {
        "prompts": len(prompts),
        "rows": len(rows),
        "dropped": dropped,
        "position_consistency": consistent / judged if judged else None,
    }
    return rows, stats
