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
            inputs={"model": _SFT_MODEL, "reward": _RM_SOURCE},
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
    if name not in STAGES:
        raise ConfigError(f"unknown stage '{name}'{did_you_mean(name, STAGES)} (stages: {', '.join(STAGES)})")
    return STAGES[name]


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
        if name not in STAGES:
            raise ConfigError(
                f"profile section '{name}' is not a stage{did_you_mean(name, STAGES)} (stages: {', '.join(STAGES)})"
            )
    return [name for name in STAGES if name in profile]


def split_overrides(overrides: list[str], stages: list[str]) -> dict[str, list[str]]:
    """``["dpo.loss=ipo", "train.max_steps=2"]`` -> per stage: a ``stage.``-prefixed key goes to that
    stage only; a key without a stage prefix goes to every stage of the run whose config has it."""
    from alignlab.config import has_key

    out: dict[str, list[str]] = {s: [] for s in stages}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. dpo.loss=ipo or train.max_steps=10)")
        key, value = item.split("=", 1)
        head, _, rest = key.partition(".")
        if head in STAGES:
            if head not in out:
                raise ConfigError(f"override '{item}': stage '{head}' is not in this run (stages: {', '.join(stages)})")
            if not rest:
                raise ConfigError(f"override '{item}': name a key of stage '{head}', e.g. {head}.train.lr=1e-4")
            out[head].append(f"{rest}={value}")
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


def wire(stage: str, section: dict, available: dict[str, Path]) -> tuple[dict, dict[str, str]]:
    """Set the section's input keys from ``available`` upstream outputs ({"sft:final": path}).

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
        for up, output in inp.sources:
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
    """
    from alignlab.config import load_config
    from alignlab.runs import stage_folder

    names = stages if stages is not None else profile_stages(profile)
    per_stage = split_overrides(list(overrides), names)
    available: dict[str, Path] = {}
    out: list[PlannedStage] = []
    for name in names:
        row = get_stage(name)
        cls = row.config_class()
        extra = list(per_stage[name])
        if run_name is not None:
            extra.append(f"{'train.' if has_train(cls) else ''}run_name={run_name}")
        section, wired = wire(name, profile.get(name) or {}, available)
        cfg = load_config(cls, None, extra, base=section)
        out.append(PlannedStage(name, cfg, wired))
        output_dir, rname = location(cfg)
        folder = stage_folder(output_dir, rname, name)
        if not only_complete_upstream or folder.is_complete():
            for output, rel in row.produces.items():
                available[f"{name}:{output}"] = folder.path / rel
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
            f"`{i.key}` ← {' or '.join(f'{st}/{o}' for st, o in i.sources)}" for i in s.inputs.values()
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
    names = stages or profile_stages(profile)
    if from_stage is not None and from_stage not in names:
        raise ConfigError(
            f"--from {from_stage}: not a stage of this run{did_you_mean(from_stage, names)} (stages: {', '.join(names)})"
        )
    planned = plan(profile, list(overrides), run_name=run_name, stages=names)
    out_dir, rname = location(planned[0].cfg)
    for p in planned:
        if location(p.cfg) != (out_dir, rname):
            raise ConfigError(
                f"stages '{planned[0].name}' and '{p.name}' write to different run folders "
                f"({'/'.join(location(planned[0].cfg))} vs {'/'.join(location(p.cfg))}); give them one run_name (--run-name NAME)"
            )
    from alignlab.runs import run_path

    write_manifest(run_path(out_dir, rname), profile=profile_name, stages=names)
    redo = set(names[names.index(from_stage) :]) if from_stage else set()
    results: dict[str, dict] = {}
    for k, p in enumerate(planned, 1):
        folder = stage_folder(out_dir, rname, p.name)
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
        elif folder.path.exists():
            shutil.rmtree(folder.path)  # an inference stage has no checkpoints: start it again
            echo(f"{head}: running into {folder.path}")
        else:
            echo(f"{head}: running into {folder.path}")
        for key, path in p.wired.items():
            echo(f"alignlab:       {key} = {path}")
        try:
            results[p.name] = get_stage(p.name).function()(p.cfg)
        except AlignlabError as e:
            again = f"alignlab run --profile {profile_name}" + (f" --run-name {run_name}" if run_name else "")
            raise StageError(
                f"stage '{p.name}' failed: {e}; the stages before it are kept: after fixing the cause, continue with `{again}`"
            ) from e
    return results
