"""The ``alignlab`` command: thin; it builds a config and calls the function a Python user would.

    alignlab run                                   the main job on the built-in default profile
    alignlab sft --config my.yaml train.lr=1e-4    one stage, from a YAML file plus overrides
    alignlab sft --profile tiny --help             every key of a stage, with its default
    alignlab generate --model runs/default/sft/final --prompt "Hi!"
    alignlab rewardbench rb.jsonl --model runs/default/reward/final   accuracy per subset (or a dpo final/)

A stage's settings come from, in order: defaults, the profile's section for the stage, the
``--config`` file, then ``key=value`` overrides (dotted ``train.lr`` or a unique leaf ``lr``).
Errors in input print one line naming the file, line or key, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from alignlab.errors import AlignlabError
from alignlab.pipeline import STAGES, Stage


def profile_section(profile: str | None, stage: str) -> dict:
    """The ``stage`` section of a built-in profile or of a YAML file with stage sections."""
    if profile is None:
        return {}
    from alignlab.profiles import load_profile

    return load_profile(profile).get(stage, {}) or {}


def _help_epilog(stage: Stage) -> str:
    from alignlab.config import describe

    lines = []
    if stage.variants:
        lines.append(f"variants: {', '.join(stage.variant_names())}")
        defaults = _variant_defaults(stage)
        if defaults:
            lines += [f"  {name}: {', '.join(f'{k}={v}' for k, v in d.items())}" for name, d in defaults.items()]
        lines.append("")
    if stage.inputs:
        lines.append("inputs wired from upstream stages of the same run (alignlab run):")
        lines += [
            f"  {i.key} <- {' or '.join(f'{s}/{o}' for s, o in i.sources)}" for i in stage.inputs.values() if i.sources
        ]
        lines.append("")
    lines.append("settings (key=value; defaults shown):")
    for key, help_text, default in describe(stage.config_class()):
        lines.append(f"  {key} = {json.dumps(default)}")
        if help_text:
            lines.append(f"      {help_text}")
    return "\n".join(lines)


def _variant_defaults(stage: Stage) -> dict[str, dict]:
    """Each variant's published defaults, where its registry records them."""
    from alignlab.pipeline import resolve

    registry = resolve(stage.variants)
    out = {}
    for name in sorted(registry):
        d = getattr(registry[name], "defaults", None)
        if d:
            out[name] = dict(d)
    return out


def _stage_parser(sub, name: str, stage: Stage, detailed: bool = True):
    cls = stage.config_class()
    p = sub.add_parser(
        name,
        help=stage.help,
        description=f"alignlab {name}: {stage.help}.\n\n{(cls.__doc__ or '').strip()}",
        # the epilog lists the loss registries' variants: built only when this stage's --help is asked
        # for, so `alignlab <command>` does not import torch just to parse its arguments
        epilog=_help_epilog(stage) if detailed else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with this stage's settings (sections model/data/train/...)")
    p.add_argument(
        "--profile",
        default=None,
        help="built-in profile to start from (quick, tiny, ...) or a YAML file with stage sections",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of this run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. train.lr=1e-4 lora.enabled=true")
    if name == "eval":
        p.add_argument(
            "--lm-eval",
            dest="lm_eval_tasks",
            default=None,
            metavar="TASKS",
            help="also run lm-evaluation-harness tasks (comma-separated, e.g. hellaswag,arc_easy) on each policy's"
            " final model: same as lm_eval=TASKS; needs lm-eval installed and the tasks' data in the local HF cache",
        )
    for key in stage.flags:
        p.add_argument(
            f"--{key.replace('.', '-').replace('_', '-')}",
            dest=f"flag_{key}",
            default=None,
            metavar="VALUE",
            help=f"same as {key}=VALUE",
        )
    from alignlab import distributed

    if name in distributed.STAGES:
        p.add_argument(
            "--num-processes",
            type=int,
            default=1,
            metavar="N",
            help="train in N processes on this machine (re-runs itself under torchrun; gloo on CPU, one GPU each on GPUs)",
        )
        p.add_argument(
            "--strategy",
            choices=distributed.STRATEGIES,
            default=None,
            help="with several processes: same as train.strategy=...",
        )
    return p


def build_config(stage: str, args) -> object:
    """The stage's config: defaults <- profile section <- --config <- key=value; with a profile, its
    inputs are wired (alignlab.pipeline.wire) to upstream stages that are complete in the same run folder."""
    from alignlab.config import load_config
    from alignlab.pipeline import get_stage, has_train, location, wire
    from alignlab.runs import stage_folder

    row = get_stage(stage)
    cls = row.config_class()
    overrides = list(args.overrides)
    flagged = [f"{k}={getattr(args, f'flag_{k}')}" for k in row.flags if getattr(args, f"flag_{k}", None) is not None]
    overrides = flagged + overrides  # an explicit key=value wins over its --flag
    if getattr(args, "resume", False) and has_train(cls):
        overrides.append("train.resume=true")
    if args.profile is None:
        return load_config(cls, args.config, overrides)
    from alignlab.profiles import load_profile

    profile = load_profile(args.profile)
    section = dict(profile.get(stage) or {})
    unwired = load_config(cls, args.config, overrides, base={k: v for k, v in section.items() if k != "inputs"})
    out_dir, run_name = location(unwired)
    available = {}
    for up, folder in ((n, stage_folder(out_dir, run_name, n)) for n in profile if n in STAGES and n != stage):
        if folder.is_complete():
            available.update({f"{up}:{o}": folder.path / rel for o, rel in STAGES[up].produces.items()})
    base, wired = wire(stage, section, available)
    for key, path in wired.items():
        print(f"alignlab: {stage}: {key} = {path} (the run's complete upstream stage)", file=sys.stderr)
    return load_config(cls, args.config, overrides, base=base) if wired else unwired


def _run_folder_args(stage: str, args) -> None:
    """``alignlab eval runs/x`` / ``alignlab report runs/x``: a bare run folder names output_dir and run_name."""
    from pathlib import Path

    kept = []
    for item in args.overrides:
        if "=" not in item and Path(item).is_dir():
            path = Path(item)
            kept += [f"output_dir={path.parent}", f"run_name={path.name}"]
        else:
            kept.append(item)
    args.overrides = kept


def cmd_stage(stage: str, args) -> int:
    import os

    from alignlab import distributed

    if getattr(args, "num_processes", 1) > 1 and "WORLD_SIZE" not in os.environ:
        return distributed.launch(distributed.strip_launch_flags(args.argv), args.num_processes)
    if getattr(args, "strategy", None):
        args.overrides = [f"train.strategy={args.strategy}", *args.overrides]
    if stage in ("eval", "report"):
        _run_folder_args(stage, args)
    if getattr(args, "lm_eval_tasks", None):
        args.overrides = [f"lm_eval={args.lm_eval_tasks}", *args.overrides]  # an explicit lm_eval=... wins
    cfg = build_config(stage, args)
    summary = STAGES[stage].function()(cfg)
    if distributed.is_main():
        print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_run(args) -> int:
    """Every stage of the profile in dependency order (alignlab.pipeline.run_pipeline)."""
    from alignlab.pipeline import run_pipeline

    results = run_pipeline(
        args.profile, list(args.overrides), run_name=args.run_name, force=args.force, from_stage=args.from_stage
    )
    for name, summary in results.items():
        if summary.get("run_dir"):
            _print_samples(summary["run_dir"], name)
    print(json.dumps(results, indent=1, default=str))
    return 0


def _print_samples(stage_dir, name: str) -> None:
    from pathlib import Path

    from alignlab.runs import StageFolder

    rows = StageFolder(Path(stage_dir)).read_samples()[:4]
    if not rows:
        return
    print(f"\nsamples of {name} ({stage_dir}/samples.jsonl):")
    for row in rows:
        print(f"  > {row['prompt'][-1]['content']}\n    {str(row['response']).strip()}")


def cmd_generate(args) -> int:
    from alignlab.config import ModelConfig, from_dict
    from alignlab.data.tokenize import encode_prompt
    from alignlab.models.load import load_model
    from alignlab.rollout.generate import SamplingParams, TransformersEngine

    if not args.prompt:
        raise AlignlabError("give at least one --prompt")
    model_cfg = from_dict(ModelConfig, {"name_or_path": args.model, "trust_remote_code": args.trust_remote_code})
    loaded = load_model(model_cfg, seed=args.seed, for_training=False)
    prompts = [encode_prompt(loaded.tokenizer, p) for p in args.prompt]
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    for prompt, gen in zip(args.prompt, TransformersEngine(loaded.model, loaded.tokenizer).generate(prompts, params)):
        print(f"> {prompt}\n{gen.text.strip()}\n")
    return 0


def cmd_score(args) -> int:
    from alignlab.scoring import score_file

    summary = score_file(
        args.model, args.data, args.out, kind=args.kind, batch_size=args.batch_size, device=args.device
    )
    print(json.dumps(summary, indent=1))
    return 0


def make_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab",
        description="Align language models with human preferences: SFT, reward models, PPO and the DPO family.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `alignlab <command> --help` for a command's settings.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    run = sub.add_parser(
        "run",
        help="the main job: every stage of a profile in dependency order",
        description="Run every stage of a profile in dependency order; each stage's inputs come from the stages before it. "
        "A complete stage is skipped, an interrupted one continues from its newest checkpoint.",
        epilog="overrides: `dpo.loss=ipo` or `sft.train.lr=1e-4` set one stage's key; a key without a stage "
        "(`train.max_steps=10`) applies to every stage that has it. `rounds=N` (iterated RLHF) repeats label, reward, "
        "ppo and dpo N times, round r >= 2 into <stage>@r folders (`ppo@2.train.lr=1e-4` sets round 2's only); "
        "eval and report then cover every round.",
    )
    run.add_argument(
        "--profile",
        default="quick",
        help="built-in profile (quick: the main job; tiny: seconds, for smoke tests) or a YAML file with stage sections",
    )
    run.add_argument("--run-name", default=None, help="the run folder's name (default: the profile's run_name)")
    run.add_argument(
        "--from",
        dest="from_stage",
        default=None,
        metavar="STAGE",
        help="train this stage and every one after it again (a later round's stage: label@2, ppo@2, ...)",
    )
    run.add_argument("--force", action="store_true", help="train every stage again even when its folder is complete")
    run.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings: stage.key=value for one stage, key=value for all"
    )
    for name, stage in STAGES.items():
        if stage.command:
            asked = argv is None or ({"-h", "--help"} & set(argv) and name in argv)
            _stage_parser(sub, name, stage, detailed=bool(asked))
    gen = sub.add_parser("generate", help="sample responses from a preset, a model folder or a checkpoint")
    gen.add_argument(
        "--model", default="smollm2-135m", help="preset, model folder, or a run's final/ or checkpoint model/ folder"
    )
    gen.add_argument("--prompt", action="append", default=[], help="a user prompt (repeat for several)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    gen.add_argument("--top-p", type=float, default=0.9)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    score = sub.add_parser("score", help="score a data file with a trained reward model (one JSON line per record)")
    score.add_argument("--model", required=True, help="a reward model folder (a reward run's final/)")
    score.add_argument(
        "--data", required=True, help="records: preference (chosen/rejected), ranking, or prompt + response"
    )
    score.add_argument("--out", required=True, help="JSONL file to write")
    score.add_argument(
        "--kind",
        default="auto",
        choices=("auto", "preference", "ranking", "sft"),
        help="data kind (auto: from the first row)",
    )
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--device", default="auto")
    from alignlab.feedback.cli import add_data_commands, add_label_commands
    from alignlab.web.cli import add_serve_command

    add_label_commands(sub)
    add_data_commands(sub)
    add_serve_command(sub)
    from alignlab.rewardbench_cli import add_command as add_rewardbench_command

    add_rewardbench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value settings after a flag (argparse takes positionals only before it)
        if not (hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    args.argv = sys.argv[1:] if argv is None else list(argv)  # what --num-processes runs again in each process
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "score":
            return cmd_score(args)
        if args.command == "rewardbench":
            from alignlab.rewardbench_cli import run_command

            return run_command(args)
        if args.command == "label":
            from alignlab.feedback.cli import run_label_command

            return run_label_command(args)
        if args.command == "data":
            from alignlab.feedback.cli import run_data_command

            return run_data_command(args)
        if args.command == "serve":
            from alignlab.web.cli import run_serve_command

            return run_serve_command(args)
        return cmd_stage(args.command, args)
    except AlignlabError as e:
        print(f"alignlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nalignlab: interrupted; the last complete checkpoint is kept: rerun with --resume to continue",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
