"""The pipeline table: one row per stage. The CLI, ``alignlab run``, config validation and the docs read it.

A row says what a stage is called, which config class describes it, which function runs it, what it
consumes from upstream stages and what it produces. To add a stage, write its config class and its
function, and add one row here: the command line (``alignlab <stage>``), ``alignlab run``, the
``--help`` text and the README's stage table follow from the row.

Wiring. An input names a config key and the upstream stages that can fill it, in order of
preference. When a run holds one of those stages, the key is set to that stage's output in the
same run folder (``runs/<run>/sft/final``, ...), whatever the profile's section says; a section
can keep its own value with ``inputs: {<input>: own}``. Running a stage on its own
(``alignlab dpo --profile quick``) wires the same way from upstream stages that are complete, and
keeps the section's value otherwise.

Rounds (iterated RLHF). A profile's top-level ``rounds: N`` (or ``rounds=N`` on the command line;
default 1: the plan is the table's stages, nothing more) repeats the :data:`ROUND_STAGES` of the
profile N − 1 more times before eval and report: round r's label stage samples new prompts from the
newest policy, its reward model is trained again on every round's labels, PPO and DPO continue from
their previous round's policy. Round r ≥ 2 of a stage is the stage name ``<stage>@<r>`` and the
folder ``runs/<run>/<stage>@<r>`` (see :mod:`alignlab.runs`); its inputs are :data:`ROUND_INPUTS`.
The stages after the rounds (eval, report) are wired to the newest round's outputs.

Glossary (one name per concept, in config keys, metrics and docs): policy π_θ; reference π_ref
(frozen); reward model (rm); prompt x; response y (the generated part); chosen y_w / rejected
y_l; logprobs (per-token log π); seq_logps (summed over response tokens); scores (reward-source
outputs before the KL penalty); rewards (scores after the KL penalty); kl (per token, or summed
per response where a metric says so); beta β (the KL weight or the implicit-reward temperature,
in every stage); gamma γ (PPO's discount only; SimPO's margin is ``simpo_gamma``); advantages,
returns, values; rollout (one batch of generated experience); stage; run (one folder).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlab.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Input:
    """A config key filled from an upstream stage's output when the run has that stage."""

    key: str  # dotted config key, e.g. "model.name_or_path"
    sources: tuple[tuple[str, str], ...]  # ((stage, output), ...) in order of preference
    clears: tuple[str, ...] = ()  # keys that belong to the section's own value (reset when wired)


@dataclass(frozen=True)
class Stage:
    name: str
    config: str  # "module:Class"
    run: str  # "module:function", called as fn(cfg) -> summary dict
    help: str
    inputs: dict[str, Input] = field(default_factory=dict)
    produces: dict[str, str] = field(default_factory=dict)  # output name -> path inside the stage folder
    flags: tuple[str, ...] = ()  # config keys also offered as --flags (e.g. dpo's --loss)
    variants: str | None = None  # "module:REGISTRY" whose keys are the stage's loss/variant names
    command: bool = True  # False: the stage has a richer command of its own (alignlab label), not the generic one

    def config_class(self) -> type:
        return resolve(self.config)

    def function(self):
        return resolve(self.run)

    def variant_names(self) -> list[str]:
        return sorted(resolve(self.variants)) if self.variants else []


_SFT_MODEL = Input("model.name_or_path", (("sft", "final"),))
_RM_SOURCE = Input("reward.source", (("reward", "final"),), clears=("reward.kwargs",))
_PREFS = Input("data.train", (("label", "preferences"),))
_MODEL_OUT = {"final": "final", "samples": "samples.jsonl"}
_REFERENCE = Input("reference", ())  # round 1: the policy as loaded (the SFT model); later rounds: ROUND_INPUTS

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "sft",
            "alignlab.config:SFTConfig",
            "alignlab.trainers.sft:train_sft",
            "supervised fine-tuning (loss on response tokens only)",
            produces=_MODEL_OUT,
        ),
        Stage(
            "label",
            "alignlab.config:LabelConfig",
            "alignlab.feedback.stage:run_label",
            "preference labels from a feedback source (simulated annotator, LLM judge, constitutional AI)",
            inputs={"model": _SFT_MODEL},
            produces={"preferences": "preferences.jsonl"},
            command=False,  # `alignlab label` (feedback.cli) labels from any source, human included
        ),
        Stage(
            "reward",
            "alignlab.config:RewardConfig",
            "alignlab.trainers.reward:train_reward",
            "reward model (scalar head) from preferences or rankings",
            inputs={"model": _SFT_MODEL, "data": _PREFS},
            produces={"final": "final"},
            flags=("loss",),
            variants="alignlab.losses.reward:REWARD_LOSSES",
        ),
        Stage(
            "dpo",
            "alignlab.config:DPOConfig",
            "alignlab.trainers.dpo:train_dpo",
            "direct preference methods (the DPO family) from preferences",
            inputs={"model": _SFT_MODEL, "data": _PREFS},
            produces=_MODEL_OUT,
            flags=("loss",),
            variants="alignlab.losses.preference:PREFERENCE_LOSSES",
        ),
        Stage(
            "ppo",
            "alignlab.config:PPOConfig",
            "alignlab.trainers.ppo:train_ppo",
            "PPO with a KL penalty against the reference, from a reward source",
            inputs={"model": _SFT_MODEL, "reward": _RM_SOURCE, "reference": _REFERENCE},
            produces=_MODEL_OUT,
        ),
        Stage(
            "rloo",
            "alignlab.config:RLOOConfig",
            "alignlab.trainers.group:train_rloo",
            "RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt",
            inputs={"model": _SFT_MODEL, "reward": _RM_SOURCE},
            produces=_MODEL_OUT,
            variants="alignlab.trainers.group:RLOO_LOSSES",
        ),
        Stage(
            "grpo",
            "alignlab.config:GRPOConfig",
            "alignlab.trainers.group:train_grpo",
            "GRPO and successors (Dr. GRPO, DAPO, GSPO): group-normalised advantages, no value model",
            inputs={"model": _SFT_MODEL, "reward": _RM_SOURCE},
            produces=_MODEL_OUT,
            variants="alignlab.trainers.group:GROUP_LOSSES",
        ),
        Stage(
            "best-of-n",
            "alignlab.config:BestOfNConfig",
            "alignlab.rollout.best_of_n:run_best_of_n",
            "best-of-n sampling by reward (inference only; reports its analytic KL)",
            inputs={"model": _SFT_MODEL, "reward": _RM_SOURCE},
            produces={"samples": "samples.jsonl"},
        ),
        Stage(
            "eval",
            "alignlab.config:EvalConfig",
            "alignlab.eval.stage:run_eval",
            "evaluation: every policy of the run on the same prompts (gold reward, win rates, KL, frontier, monitors)",
            inputs={"proxy": Input("proxy", (("reward", "final"),))},
            produces={"eval": "eval.json", "samples": "samples.jsonl"},
        ),
        Stage(
            "report",
            "alignlab.config:ReportConfig",
            "alignlab.eval.stage:run_report",
            "the run's report: one self-contained HTML file and summary.json, from the run folder",
            produces={"report": "report.html", "summary": "summary.json"},
        ),
    )
}


def resolve(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def get_stage(name: str) -> Stage:
    """The table's row of a stage; a round's name (``ppo@2``) names its stage's row."""
    from alignlab.runs import split_round

    base = split_round(name)[0]
    if base not in STAGES:
        raise ConfigError(f"unknown stage '{name}'{did_you_mean(name, STAGES)} (stages: {', '.join(STAGES)})")
    return STAGES[base]


# ----------------------------------------------------------------------------- rounds (iterated RLHF)
ROUND_STAGES = ("label", "reward", "dpo", "ppo")
"""The stages a profile's ``rounds: N`` repeats (those of them the profile has), in table order."""

FINAL_STAGES = ("eval", "report")
"""Stages that come after the last round and read its outputs (the newest policies and reward model)."""

PREVIOUS, THIS = -1, 0
ROUND_INPUTS: dict[str, dict[str, tuple[tuple[str, str, int], ...]]] = {
    # new responses from the newest policy: PPO's when the run has PPO, else DPO's (online DPO)
    "label": {"model": (("ppo", "final", PREVIOUS), ("dpo", "final", PREVIOUS), ("sft", "final", THIS))},
    # trained again from the SFT model, on the union of every round's labels (label@r's pool)
    "reward": {"model": (("sft", "final", THIS),), "data": (("label", "pool", THIS),)},
    # iterative DPO: the previous round's policy (also its π_ref, as loaded) on the round's new pairs
    "dpo": {"model": (("dpo", "final", PREVIOUS),), "data": (("label", "preferences", THIS),)},
    # PPO continues from its previous policy on the round's reward model, its KL penalty still to SFT
    "ppo": {
        "model": (("ppo", "final", PREVIOUS),),
        "reward": (("reward", "final", THIS),),
        "reference": (("sft", "final", THIS),),
    },
}
"""Round r ≥ 2's wiring: per stage and input (the table row's input names), its sources in order of
preference as (stage, output, round offset); a stage that is not repeated (sft) is always round 1's."""

ROUND_PRODUCES = {"label": {"pool": "preferences-all.jsonl"}}
"""Outputs a stage has only in rounds r ≥ 2: label@r's pool is every round's labels up to r."""

PROFILE_KEYS = {"rounds": "iterated RLHF: how many rounds of label → reward → ppo/dpo (1: the stages once)"}
"""Top-level profile keys that are settings of the run, not stage sections."""


def rounds_of(profile: dict, overrides: list[str] = ()) -> tuple[int, list[str]]:
    """The run's ``rounds`` (an override ``rounds=N`` wins over the profile's key) and the other overrides."""
    value, rest = profile.get("rounds", 1), []
    for item in overrides:
        key, eq, v = item.partition("=")
        if eq and key.strip() == "rounds":
            value = v.strip()
        else:
            rest.append(item)
    whole = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.isdigit())
    if not whole or int(value) < 1:
        raise ConfigError(f"profile key 'rounds' must be a whole number >= 1 (1: no extra rounds), got {value!r}")
    return int(value), rest


def round_plan(names: list[str], rounds: int) -> list[str]:
    """The stage names of a run with ``rounds`` rounds: the profile's stages up to eval, then each later
    round's :data:`ROUND_STAGES` (``label@2``, ``reward@2``, ...), then eval and report."""
    from alignlab.runs import round_name

    if rounds == 1:
        return list(names)
    repeat = [n for n in names if n in ROUND_STAGES]
    if "label" not in repeat or not {"dpo", "ppo"} & set(repeat):
        raise ConfigError(
            f"rounds: {rounds} repeats label -> reward -> ppo/dpo, so the profile needs a 'label' section and a "
            f"'ppo' or 'dpo' section (its stages: {', '.join(names)})"
        )
    head = [n for n in names if n not in FINAL_STAGES]
    tail = [n for n in names if n in FINAL_STAGES]
    return head + [round_name(n, r) for r in range(2, rounds + 1) for n in repeat] + tail


def _round_sources(stage: str, r: int) -> dict[str, tuple[tuple[str, str], ...]]:
    """Round r's sources per input of ``stage`` as ((stage name, output), ...) (:data:`ROUND_INPUTS`)."""
    from alignlab.runs import round_name

    return {
        inp: tuple((round_name(st, max(1, r + off) if st in ROUND_STAGES else 1), out) for st, out, off in sources)
        for inp, sources in ROUND_INPUTS.get(stage, {}).items()
    }


# ----------------------------------------------------------------------------- where a stage writes
def location(cfg) -> tuple[str, str]:
    """(output_dir, run_name) of a stage config (in ``train`` for training stages, top level otherwise)."""
    holder = cfg.train if hasattr(cfg, "train") else cfg
    return holder.output_dir, holder.run_name


def output_path(output_dir: str | Path, run_name: str, stage: str, output: str) -> Path:
    from alignlab.runs import stage_folder

    return stage_folder(output_dir, run_name, stage).path / get_stage(stage).produces[output]


# ----------------------------------------------------------------------------- profiles -> plans
def profile_stages(profile: dict) -> list[str]:
    """The profile's stages in pipeline (dependency) order; an unknown section is an error."""
    for name in profile:
        if name not in STAGES and name not in PROFILE_KEYS:
            raise ConfigError(
                f"profile section '{name}' is not a stage{did_you_mean(name, [*STAGES, *PROFILE_KEYS])} "
                f"(stages: {', '.join(STAGES)}; run settings: {', '.join(PROFILE_KEYS)})"
            )
    return [name for name in STAGES if name in profile]


def split_overrides(overrides: list[str], stages: list[str]) -> dict[str, list[str]]:
    """``["dpo.loss=ipo", "train.max_steps=2"]`` -> per stage: a ``stage.``-prefixed key goes to that
    stage only (``ppo.`` to every round of ppo, ``ppo@2.`` to round 2's only); a key without a stage
    prefix goes to every stage of the run whose config has it."""
    from alignlab.config import has_key
    from alignlab.runs import split_round

    out: dict[str, list[str]] = {s: [] for s in stages}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. dpo.loss=ipo or train.max_steps=10)")
        key, value = item.split("=", 1)
        head, _, rest = key.partition(".")
        if split_round(head)[0] in STAGES:
            named = [s for s in stages if s == head or split_round(s)[0] == head]
            if not named:
                raise ConfigError(f"override '{item}': stage '{head}' is not in this run (stages: {', '.join(stages)})")
            if not rest:
                raise ConfigError(f"override '{item}': name a key of stage '{head}', e.g. {head}.train.lr=1e-4")
            for s in named:
                out[s].append(f"{rest}={value}")
            continue
        takers = [s for s in stages if has_key(get_stage(s).config_class(), key)]
        if not takers:
            valid = [f"{s}.{k}" for s in stages for k in _keys(s)] + [k for s in stages for k in _keys(s)]
            raise ConfigError(
                f"unknown key '{key}' for the stages of this run ({', '.join(stages)}){did_you_mean(key, valid)}"
            )
        for s in takers:
            out[s].append(item)
    return out


def _keys(stage: str) -> list[str]:
    from alignlab.config import leaf_keys

    return list(leaf_keys(get_stage(stage).config_class()))


@dataclass
class PlannedStage:
    name: str
    cfg: Any
    wired: dict[str, str]  # config key -> upstream path it was set to


def wire(
    stage: str,
    section: dict,
    available: dict[str, Path],
    sources: dict[str, tuple[tuple[str, str], ...]] | None = None,
) -> tuple[dict, dict[str, str]]:
    """Set the section's input keys from ``available`` upstream outputs ({"sft:final": path}).

    ``sources`` replaces the table's sources of the inputs it names (a later round's wiring).
    Returns (the section without its ``inputs`` key, {key: path} of what was wired).
    """
    section = dict(section or {})
    own = section.pop("inputs", None) or {}
    if not isinstance(own, dict):
        raise ConfigError(
            f"profile section '{stage}': 'inputs' must map an input name to 'own' (keep the section's value)"
        )
    row = get_stage(stage)
    for name, how in own.items():
        if name not in row.inputs:
            raise ConfigError(
                f"profile section '{stage}': unknown input '{name}'{did_you_mean(name, row.inputs)} (inputs: {', '.join(row.inputs) or 'none'})"
            )
        if how != "own":
            raise ConfigError(f"profile section '{stage}': inputs.{name} must be 'own', got {how!r}")
    wired: dict[str, str] = {}
    for name, inp in row.inputs.items():
        if name in own:
            continue
        for up, output in (sources or {}).get(name, inp.sources):
            path = available.get(f"{up}:{output}")
            if path is not None:
                _set_dotted(section, inp.key, str(path))
                for key in inp.clears:
                    _drop_dotted(section, key)
                wired[inp.key] = str(path)
                break
    return section, wired


def _drop_dotted(tree: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in tree:
        return
    if not rest:
        del tree[head]
    elif isinstance(tree[head], dict):
        tree[head] = dict(tree[head])
        _drop_dotted(tree[head], rest)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    node[parts[-1]] = value


def plan(
    profile: dict,
    overrides: list[str],
    *,
    run_name: str | None = None,
    only_complete_upstream: bool = False,
    stages: list[str] | None = None,
) -> list[PlannedStage]:
    """Configs for the profile's stages in order, each wired to the outputs of those before it.

    ``only_complete_upstream``: wire only from upstream stage folders that are already complete
    (for a stage run on its own); otherwise every earlier stage of the plan counts as available.
    The profile's ``rounds`` (or an override ``rounds=N``) adds the later rounds' stages
    (:func:`round_plan`), each wired by :data:`ROUND_INPUTS` and written under the run name
    ``<run>@<r>``; eval and report are wired to the newest round's outputs.
    """
    from alignlab.config import load_config
    from alignlab.runs import round_name, split_round, stage_folder

    rounds, overrides = rounds_of(profile, list(overrides))
    names = stages if stages is not None else round_plan(profile_stages(profile), rounds)
    per_stage = split_overrides(overrides, names)
    available: dict[str, Path] = {}  # "<stage name>:<output>" ("ppo@2:final") -> path
    newest: dict[str, Path] = {}  # "<stage>:<output>" -> the path in the newest round planned so far
    out: list[PlannedStage] = []
    for name in names:
        base, r = split_round(name)
        row = get_stage(name)
        cls = row.config_class()
        extra = list(per_stage[name])
        if run_name is not None:
            extra.append(f"{'train.' if has_train(cls) else ''}run_name={run_name}")
        upstream = newest if base in FINAL_STAGES else available
        section, wired = wire(base, profile.get(base) or {}, upstream, _round_sources(base, r) if r > 1 else None)
        cfg = load_config(cls, None, extra, base=section)
        if r > 1:  # round r's stage writes <run>/<stage>@r (alignlab.runs.stage_folder)
            holder = cfg.train if has_train(cls) else cfg
            holder.run_name = round_name(holder.run_name, r)
        out.append(PlannedStage(name, cfg, wired))
        output_dir, rname = location(cfg)
        folder = stage_folder(output_dir, rname, base)
        if not only_complete_upstream or folder.is_complete():
            produced = {**row.produces, **(ROUND_PRODUCES.get(base, {}) if r > 1 else {})}
            for output, rel in produced.items():
                available[f"{name}:{output}"] = newest[f"{base}:{output}"] = folder.path / rel
    return out


def has_train(cls: type) -> bool:
    import dataclasses

    return any(f.name == "train" for f in dataclasses.fields(cls))


def stage_table_markdown() -> str:
    """The README's stage table, generated from this table and the loss registries
    (``python scripts/update_readme.py`` writes it between the README's stage markers)."""
    lines = [
        "| command | what it does | variants (`--help` shows each one's published defaults) | inputs in `alignlab run` |",
        "|---|---|---|---|",
    ]
    for s in STAGES.values():
        variants = ", ".join(f"`{v}`" for v in s.variant_names())
        consumes = ", ".join(
            f"`{i.key}` ← {' or '.join(f'{st}/{o}' for st, o in i.sources)}" for i in s.inputs.values() if i.sources
        )
        command = (
            f"`alignlab {s.name}`" if s.command else f"`alignlab {s.name}` (its own command; a stage of `alignlab run`)"
        )
        lines.append(f"| {command} | {s.help} | {variants} | {consumes} |")
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- stages:begin (generated from alignlab.pipeline) -->", "<!-- stages:end -->"


# ----------------------------------------------------------------------------- running a whole profile
def run_pipeline(
    profile_name: str,
    overrides: list[str] = (),
    *,
    run_name: str | None = None,
    force: bool = False,
    from_stage: str | None = None,
    stages: list[str] | None = None,
    echo=print,
) -> dict[str, dict]:
    """Run every stage of a profile in dependency order; returns {stage: summary}.

    A stage whose folder is complete is skipped (unless ``force``, or it is ``from_stage`` or
    after it: those are trained again from scratch); an interrupted one continues from its newest
    checkpoint. A failure names the stage, the cause and the command that continues the run.
    """
    import shutil

    from alignlab.errors import AlignlabError, StageError
    from alignlab.profiles import load_profile
    from alignlab.runs import stage_folder, write_manifest

    profile = load_profile(profile_name)
    rounds, overrides = rounds_of(profile, list(overrides))
    names = stages or round_plan(profile_stages(profile), rounds)
    if from_stage is not None and from_stage not in names:
        raise ConfigError(
            f"--from {from_stage}: not a stage of this run{did_you_mean(from_stage, names)} (stages: {', '.join(names)})"
        )
    planned = plan(profile, overrides, run_name=run_name, stages=names)
    from alignlab.runs import read_manifest, run_path, split_round

    out_dir, rname = location(planned[0].cfg)
    run = run_path(out_dir, rname)
    for p in planned:
        if run_path(*location(p.cfg)) != run:
            raise ConfigError(
                f"stages '{planned[0].name}' and '{p.name}' write to different run folders "
                f"({run} vs {run_path(*location(p.cfg))}); give them one run_name (--run-name NAME)"
            )
    before = (read_manifest(run) or {}).get("stages")
    write_manifest(run, profile=profile_name, stages=names, extra={"rounds": rounds} if rounds > 1 else None)
    redo = set(names[names.index(from_stage) :]) if from_stage else set()
    if before is not None and before != names and (rounds > 1 or any(split_round(b)[1] > 1 for b in before)):
        redo |= set(FINAL_STAGES)  # the run gained (or lost) rounds: evaluate and report the new newest ones
    results: dict[str, dict] = {}
    for k, p in enumerate(planned, 1):
        folder = stage_folder(*location(p.cfg), get_stage(p.name).name)
        head = f"alignlab: [{k}/{len(planned)}] {p.name}"
        if (force or p.name in redo) and folder.path.exists():
            shutil.rmtree(folder.path)
        if folder.is_complete():
            echo(f"{head}: {folder.path} is complete; skipping (--from {p.name} trains it again)")
            results[p.name] = folder.summary() or {}
            continue
        holder = p.cfg.train if hasattr(p.cfg, "train") else None
        if folder.path.exists() and holder is not None:
            holder.resume = True  # an interrupted stage continues where it stopped
            echo(f"{head}: continuing the interrupted stage in {folder.path}")
        else:  # a new stage, or an inference stage (no checkpoints: open_stage starts it afresh)
            echo(f"{head}: running into {folder.path}")
        for key, path in p.wired.items():
            echo(f"alignlab:       {key} = {path}")
        try:
            results[p.name] = get_stage(p.name).function()(p.cfg)
        except AlignlabError as e:
            again = f"alignlab run --profile {profile_name}" + (f" --run-name {run_name}" if run_name else "")
            again += f" rounds={rounds}" if rounds != rounds_of(profile)[0] else ""
            raise StageError(
                f"stage '{p.name}' failed: {e}; the stages before it are kept: after fixing the cause, continue with `{again}`"
            ) from e
    return results
