"""Where labels come from, behind one call: :func:`label`.

``label(source, policy=..., prompts=..., k=2, out=...)`` samples ``k`` responses per prompt from a
policy (a preset such as ``smollm2-135m`` or ``tiny``, or a model folder), labels them, and writes
JSONL rows (atomically) that the training stages read as they are:

* ``simulated`` — the gold-reward annotator (:mod:`alignlab.feedback.annotator`): preference rows
  for k = 2, ranking rows for k > 2 (``kind`` overrides), optionally a panel of annotators;
* ``judge`` — an LLM judge (:mod:`alignlab.feedback.judge`), both orders averaged: preference
  rows for every pair of the k responses (or rankings by mean win probability); the summary
  reports its position consistency and its agreement with the ``gold`` reward;
* ``constitutional`` — RLAIF preference rows from a principle-guided judge, plus SL-CAI revision
  rows (SFT) in ``sft_out`` (:mod:`alignlab.feedback.constitutional`);
* ``human`` — tasks go into the label store (``store`` is required); with ``annotator`` set the
  terminal labelling loop runs; the store's labels are then exported to ``out``.

With ``store`` set, the machine sources record their prompts, responses and labels in the store
too (source and annotator kept), so human and AI labels can be compared there.
Every row carries its provenance: ``source``, ``annotator``/``judge``, ``policy``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean

KINDS = ("auto", "preference", "ranking")


def load_prompts(spec, limit: int | None = None) -> list:
    """Prompts from any data spec (``demo:prompts``, a file): each a string (one user turn) or a
    messages list."""
    from alignlab.data import load_records

    out = []
    for rec in load_records(spec, "prompt", limit=limit).records:
        msgs = [m.as_dict() for m in rec.prompt]
        out.append(msgs[0]["content"] if len(msgs) == 1 else msgs)
    return out


def load_policy(policy, *, device: str = "auto", seed: int = 0):
    """A :class:`~alignlab.models.load.Loaded` policy from a preset or folder (or one given as is)."""
    if not isinstance(policy, (str, os.PathLike)):
        return policy
    from alignlab.config import ModelConfig, from_dict
    from alignlab.models.load import load_model

    return load_model(
        from_dict(ModelConfig, {"name_or_path": os.fspath(policy), "device": device}), seed=seed, for_training=False
    )


def sample_responses(
    loaded,
    prompts: Sequence,
    k: int,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.9,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[str]]:
    """``k`` sampled responses per prompt (``[prompt][j]``), one seeded generation call.

    ``batch_size`` responses per ``generate`` call: decoding a small model on a CPU is bound by
    per-step overhead, so wider batches are faster (SmolLM2-135M, 40 new tokens, 2 cores: 62
    tokens/s at 16, 97 at 64, 112 at 128).
    """
    from alignlab.data.tokenize import encode_prompt
    from alignlab.feedback.constitutional import conversation
    from alignlab.rollout.generate import SamplingParams, TransformersEngine

    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    ids = [encode_prompt(loaded.tokenizer, conversation(p)) for p in prompts for _ in range(k)]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    texts = [
        g.text.strip()
        for g in TransformersEngine(loaded.model, loaded.tokenizer, batch_size=batch_size).generate(ids, params)
    ]
    return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]


def _pairs(prompts, responses):
    """All (prompt, a, b) pairs among each prompt's distinct responses."""
    out = []
    for p, group in zip(prompts, responses):
        distinct = list(dict.fromkeys(r for r in group if r.strip()))
        for a, b in itertools.combinations(distinct, 2):
            out.append((p, a, b))
    return out


def _rank_by_wins(prompts, responses, prob: Callable) -> list[dict]:
    """Rankings from pairwise win probabilities: each response's mean P(win) against the others."""
    rows = []
    for p, group in zip(prompts, responses):
        distinct = list(dict.fromkeys(r for r in group if r.strip()))
        if len(distinct) < 2:
            continue
        pairs = list(itertools.combinations(range(len(distinct)), 2))
        probs = prob([p] * len(pairs), [distinct[i] for i, _ in pairs], [distinct[j] for _, j in pairs])
        wins = [0.0] * len(distinct)
        for (i, j), q in zip(pairs, probs):
            wins[i] += q
            wins[j] += 1 - q
        order = sorted(range(len(distinct)), key=lambda i: -wins[i])
        ranking = [0] * len(distinct)
        for place, i in enumerate(order):
            ranking[i] = place + 1
        rows.append({"prompt": p, "responses": distinct, "ranking": ranking})
    return rows


def gold_agreement(rows: Sequence[dict], gold="demo") -> float | None:
    """Share of preference rows whose chosen response the gold reward scores higher (pairs the
    gold scores equal are left out); None when there are none."""
    from alignlab.feedback.annotator import prompt_text
    from alignlab.gold import get_gold

    fn = get_gold(gold)
    prompts = [prompt_text(r["prompt"]) for r in rows]
    gc, gr = fn(prompts, [r["chosen"] for r in rows]), fn(prompts, [r["rejected"] for r in rows])
    decided = [(c, r) for c, r in zip(gc, gr) if c != r]
    return sum(c > r for c, r in decided) / len(decided) if decided else None


def _to_store(store, rows: list[dict], policy: str) -> None:
    """Record machine labels in the store: one task and one label per row."""
    for r in rows:
        if "ranking" in r:
            task = store.add_item(r["prompt"], r["responses"], kind="ranking", policy=policy)
            store.add_label(task, r["annotator"], ranking=r["ranking"], source=r["source"])
        else:
            first_is_chosen = r.get("chosen_position", "A") == "A"
            shown = [r["chosen"], r["rejected"]] if first_is_chosen else [r["rejected"], r["chosen"]]
            task = store.add_item(r["prompt"], shown, kind="pair", policy=policy)
            conf = r.get("confidence")
            store.add_label(
                task, r["annotator"], choice="A" if first_is_chosen else "B", source=r["source"], confidence=conf
            )


@dataclass
class LabelJob:
    """Everything a labeller needs: the prompts, their responses, and the options of :func:`label`."""

    prompts: list
    responses: list[list[str]]
    as_ranking: bool
    policy_name: str
    options: dict
    out: Path
    loaded: Any = None
    """the policy, when it was loaded (reused as the judge when they are the same model)"""
    store: Any = None
    summary: dict = field(default_factory=dict)

    def pairs(self) -> tuple[list, list[str], list[str]]:
        pairs = _pairs(self.prompts, self.responses)
        return [p for p, _, _ in pairs], [a for _, a, _ in pairs], [b for _, _, b in pairs]

    def policy(self):
        if self.loaded is None:
            self.loaded = load_policy(self.options["policy"], device=self.options["device"], seed=self.options["seed"])
        return self.loaded

    def judge(self):
        from alignlab.feedback.judge import Judge

        jm, o = self.options["judge_model"], self.options
        if jm is None or isinstance(jm, (str, os.PathLike)):
            name = os.fspath(jm or "smollm2-135m")
            same = self.loaded is not None and name == self.policy_name
            jl = self.loaded if same else load_policy(name, device=o["device"], seed=o["seed"])
        else:
            jl, name = jm, getattr(jm, "source", "judge")
        return Judge(jl.model, jl.tokenizer, name=name)


def _simulated(job: LabelJob) -> list[dict]:
    from alignlab.feedback.annotator import AnnotatorPanel, SimulatedAnnotator

    o = job.options
    noise = {"temperature": o["tau"], "position_bias": o["position_bias"], "tie_margin": o["tie_margin"]}
    noise["flip_rate"] = o["flip_rate"]
    if o["annotators"] == 1:
        ann = SimulatedAnnotator(o["gold"], seed=o["seed"], **noise)
    else:
        ann = AnnotatorPanel(o["annotators"], gold=o["gold"], seed=o["seed"], **noise)
    if job.as_ranking:
        keep = [(p, list(dict.fromkeys(g))) for p, g in zip(job.prompts, job.responses) if len(set(g)) >= 2]
        job.summary["dropped_identical"] = len(job.prompts) - len(keep)
        return ann.label_rankings([p for p, _ in keep], [g for _, g in keep])
    rows, stats = ann.label_pairs(*job.pairs())
    job.summary.update({"pairs": stats.pairs, "ties": stats.ties, "flips": stats.flips})
    return rows


def _judge(job: LabelJob) -> list[dict]:
    judge = job.judge()
    if job.as_ranking:
        rows = _rank_by_wins(job.prompts, job.responses, lambda p, a, b: judge.compare(p, a, b).prob.tolist())
        for r in rows:
            r.update({"source": "judge", "annotator": judge.name})
        return rows
    rows, stats = judge.label_pairs(*job.pairs())
    job.summary.update(stats)
    job.summary["gold_agreement"] = gold_agreement(rows, job.options["gold"])
    return rows


def _constitutional(job: LabelJob) -> list[dict]:
    from alignlab.feedback.constitutional import Sampler, ai_preferences, critique_and_revise, load_principles
    from alignlab.runs import atomic_write_jsonl

    o = job.options
    principles = load_principles(o["principles"])
    loaded = job.policy()
    sampler = Sampler(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=o["max_new_tokens"],
        temperature=o["temperature"],
        name=job.policy_name,
    )
    two = [tuple(g[:2]) for g in job.responses]
    rows, stats = ai_preferences(sampler, job.judge(), job.prompts, principles, seed=o["seed"], responses=two)
    job.summary.update({f"rlaif_{k}": v for k, v in stats.items() if k != "prompts"})
    for r in rows:
        r["annotator"] = r["judge"]
    sft_rows, sft_stats = critique_and_revise(sampler, job.prompts, principles, seed=o["seed"])
    sft_path = Path(o["sft_out"]) if o["sft_out"] is not None else job.out.with_name(job.out.stem + ".sft.jsonl")
    for r in sft_rows:
        r["policy"] = job.policy_name
    atomic_write_jsonl(sft_path, sft_rows)
    job.summary.update(
        {"sft_out": str(sft_path), "sft_rows": sft_stats["rows"], "sft_dropped_empty": sft_stats["dropped_empty"]}
    )
    return rows


def _human(job: LabelJob) -> list[dict]:
    store, o = job.store, job.options
    for p, group in zip(job.prompts, job.responses):
        distinct = list(dict.fromkeys(r for r in group if r.strip()))
        if job.as_ranking and len(distinct) >= 2:
            store.add_item(p, distinct, kind="ranking", policy=job.policy_name)
        else:
            for a, b in itertools.combinations(distinct, 2):
                store.add_item(p, [a, b], kind="pair", policy=job.policy_name)
    if o["annotator"]:
        from alignlab.feedback.terminal import label_interactively

        job.summary["labelled_now"] = label_interactively(
            store, o["annotator"], input_fn=o["input_fn"], print_fn=o["print_fn"]
        )
    return store.ranking_rows() if job.as_ranking else store.preference_rows()


# One function per source: a new source is one function and one line.
LABELLERS: dict[str, Callable[[LabelJob], list[dict]]] = {
    "simulated": _simulated,
    "judge": _judge,
    "constitutional": _constitutional,
    "human": _human,
}
SOURCES = tuple(LABELLERS)


def label(
    source: str = "simulated",
    *,
    out,
    policy="smollm2-135m",
    prompts="demo:prompts",
    k: int = 2,
    limit: int | None = None,
    kind: str = "auto",
    responses: Sequence[Sequence[str]] | None = None,
    gold="demo",
    tau: float = 1.0,
    position_bias: float = 0.0,
    tie_margin: float = 0.0,
    flip_rate: float = 0.0,
    annotators: int = 1,
    judge_model=None,
    principles=None,
    sft_out=None,
    store=None,
    annotator: str | None = None,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., None] = print,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 0.9,
    device: str = "auto",
) -> dict:
    """Sample, label and write (see the module docstring); returns a summary dict with
    ``source, policy, prompts, responses, kind, rows, out`` and the source's own counts.

    ``responses`` (one list per prompt) skips sampling: label those instead. ``policy`` may also
    be a loaded model (``alignlab.models.load.Loaded``); so may ``judge_model``. ``--source
    human`` adds the responses to the store as new tasks on every call.
    """
    from alignlab.runs import atomic_write_jsonl

    options = dict(locals())
    if source not in LABELLERS:
        raise ConfigError(
            f"--source must be one of {', '.join(SOURCES)}, got {source!r}{did_you_mean(source, SOURCES)}"
        )
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if source == "human" and store is None:
        raise ConfigError("--source human needs --store FILE.db: the labels are collected in the label store")
    out = Path(out)
    prompt_list = load_prompts(prompts, limit) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    policy_name = os.fspath(policy if isinstance(policy, (str, os.PathLike)) else getattr(policy, "source", "policy"))
    loaded = None
    if responses is None:
        if k < 2:
            raise ConfigError(f"--k must be at least 2 to compare responses, got {k}")
        loaded = load_policy(policy, device=device, seed=seed)
        responses = sample_responses(
            loaded, prompt_list, k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
        )
    responses = [list(g) for g in responses]
    if len(responses) != len(prompt_list):
        raise ConfigError(f"label: {len(responses)} response lists for {len(prompt_list)} prompts")
    k_max = max((len(g) for g in responses), default=0)
    as_ranking = source != "constitutional" and (kind == "ranking" or (kind == "auto" and k_max > 2))
    if store is not None and not hasattr(store, "add_item"):
        from alignlab.feedback.store import LabelStore

        store = LabelStore(store)
    job = LabelJob(prompt_list, responses, as_ranking, policy_name, options, out, loaded, store)
    job.summary = {
        "source": source,
        "policy": policy_name,
        "prompts": len(prompt_list),
        "responses": sum(map(len, responses)),
    }
    rows = LABELLERS[source](job)
    if source != "human":
        for r in rows:
            r["policy"] = policy_name
        if store is not None:
            _to_store(store, rows, policy_name)
    if store is not None:
        job.summary["store"] = str(store.path)
    atomic_write_jsonl(out, rows)
    job.summary.update({"kind": "ranking" if as_ranking else "preference", "rows": len(rows), "out": str(out)})
    return job.summary
