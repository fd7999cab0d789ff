"""The ``alignlab`` command: thin; it builds a config and calls the function a Python user would.

    alignlab run                                   the main job on the built-in default profile
    alignlab sft --config my.yaml train.lr=1e-4    one stage, from a YAML file plus overrides
    alignlab sft --profile tiny --help             every key of a stage, with its default
    alignlab generate --model runs/default/sft/final --prompt "Hi!"

A stage's settings come from, in order: defaults, the profile's section for the stage, the
``--config`` file, then ``key=value`` overrides (dotted ``train.lr`` or a unique leaf ``lr``).
Errors in input print one line naming the file, line or key, and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass

from alignlab.errors import AlignlabError


@dataclass(frozen=True)
class Stage:
    config: str  # "module:Class"
    train: str  # "module:function"
    help: str
    flags: tuple[str, ...] = ()  # config keys also offered as --flags (e.g. dpo's --loss)


STAGES: dict[str, Stage] = {
    "sft": Stage("alignlab.config:SFTConfig", "alignlab.trainers.sft:train_sft", "supervised fine-tuning (loss on response tokens only)"),
    "reward": Stage(
        "alignlab.config:RewardConfig", "alignlab.trainers.reward:train_reward", "reward model (scalar head) from preferences or rankings", ("loss",)
    ),
    "dpo": Stage(
        "alignlab.config:DPOConfig", "alignlab.trainers.dpo:train_dpo", "direct preference methods: dpo, cdpo, ipo, hinge, robust, kto, orpo, simpo", ("loss",)
    ),
    "ppo": Stage("alignlab.config:PPOConfig", "alignlab.trainers.ppo:train_ppo", "PPO with a KL penalty against the reference, from a reward source"),
    "rloo": Stage("alignlab.config:RLOOConfig", "alignlab.trainers.group:train_rloo", "RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt"),
    "grpo": Stage("alignlab.config:GRPOConfig", "alignlab.trainers.group:train_grpo", "GRPO / Dr. GRPO: group-normalised advantages, KL to the reference in the loss"),
    "best-of-n": Stage("alignlab.config:BestOfNConfig", "alignlab.trainers.best_of_n:run_best_of_n", "best-of-n sampling by reward (inference only; reports its analytic KL)"),
}

# The stages `alignlab run` runs, in order, when present in the profile.
PIPELINE = ("sft",)


def _resolve(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def profile_section(profile: str | None, stage: str) -> dict:
    """The ``stage`` section of a built-in profile (``default``, ``tiny``) or of a YAML file with stage sections."""
    if profile is None:
        return {}
    from alignlab.profiles import load_profile

    return load_profile(profile).get(stage, {}) or {}


def _help_epilog(cls) -> str:
    from alignlab.config import describe

    lines = ["settings (key=value; defaults shown):"]
    for key, help_text, default in describe(cls):
        lines.append(f"  {key} = {json.dumps(default)}")
        if help_text:
            lines.append(f"      {help_text}")
    return "\n".join(lines)


def _stage_parser(sub, name: str, stage: Stage):
    cls = _resolve(stage.config)
    p = sub.add_parser(
        name,
        help=stage.help,
        description=f"alignlab {name}: {stage.help}.\n\n{(cls.__doc__ or '').strip()}",
        epilog=_help_epilog(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with this stage's settings (sections model/data/train/...)")
    p.add_argument("--profile", default=None, help="built-in profile to start from: default (SmolLM2 + LoRA) or tiny")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint of this run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings, e.g. train.lr=1e-4 lora.enabled=true")
    for key in stage.flags:
        p.add_argument(f"--{key.replace('.', '-').replace('_', '-')}", dest=f"flag_{key}", default=None, metavar="VALUE", help=f"same as {key}=VALUE")
    return p


def build_config(stage: str, args) -> object:
    from alignlab.config import load_config

    cls = _resolve(STAGES[stage].config)
    overrides = list(args.overrides)
    flagged = [f"{k}={getattr(args, f'flag_{k}')}" for k in STAGES[stage].flags if getattr(args, f"flag_{k}", None) is not None]
    overrides = flagged + overrides  # an explicit key=value wins over its --flag
    if getattr(args, "resume", False):
        overrides.append("train.resume=true")
    return load_config(cls, args.config, overrides, base=profile_section(args.profile, stage))


def cmd_stage(stage: str, args) -> int:
    cfg = build_config(stage, args)
    summary = _resolve(STAGES[stage].train)(cfg)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_run(args) -> int:
    """Run each stage of the profile in order; a stage whose folder is complete is skipped."""
    from alignlab.config import load_config
    from alignlab.profiles import load_profile
    from alignlab.trainers.run import RunDir

    profile = load_profile(args.profile or "default")
    ran = {}
    for stage in PIPELINE:
        if stage not in profile:
            continue
        cls = _resolve(STAGES[stage].config)
        cfg = load_config(cls, None, list(args.overrides), base=profile[stage])
        run = RunDir(cfg.train.output_dir, cfg.train.run_name, stage)
        if run.is_complete() and not args.force:
            print(f"alignlab: {stage}: {run.path} is complete; skipping (use --force to train it again)")
            continue
        if run.path.exists() and not run.is_complete():
            cfg.train.resume = True  # an interrupted stage continues where it stopped
        if args.force and run.path.exists():
            import shutil

            shutil.rmtree(run.path)
            cfg.train.resume = False
        print(f"alignlab: {stage}: training into {run.path}")
        ran[stage] = _resolve(STAGES[stage].train)(cfg)
        _print_samples(run.path)
    print(json.dumps(ran, indent=1, default=str))
    return 0


def _print_samples(stage_dir) -> None:
    path = stage_dir / "samples.jsonl"
    if not path.is_file():
        return
    print(f"\nsamples ({path}):")
    for line in path.read_text(encoding="utf-8").splitlines()[:4]:
        row = json.loads(line)
        print(f"  > {row['prompt'][-1]['content']}\n    {row['response'].strip()}")


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
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    for prompt, gen in zip(args.prompt, TransformersEngine(loaded.model, loaded.tokenizer).generate(prompts, params)):
        print(f"> {prompt}\n{gen.text.strip()}\n")
    return 0


def cmd_score(args) -> int:
    from alignlab.trainers.reward import score_file

    summary = score_file(args.model, args.data, args.out, kind=args.kind, batch_size=args.batch_size, device=args.device)
    print(json.dumps(summary, indent=1))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab",
        description="Align language models with human preferences: SFT, reward models, PPO and the DPO family.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `alignlab <command> --help` for a command's settings.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    run = sub.add_parser("run", help="the main job: every stage of a profile (default: SmolLM2-135M + LoRA on the demo data)")
    run.add_argument("--profile", default="default", help="built-in profile (default, tiny) or a YAML file with stage sections")
    run.add_argument("--force", action="store_true", help="train stages again even when their folder is complete")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="settings applied to every stage, e.g. train.max_steps=10")
    for name, stage in STAGES.items():
        _stage_parser(sub, name, stage)
    gen = sub.add_parser("generate", help="sample responses from a preset, a model folder or a checkpoint")
    gen.add_argument("--model", default="smollm2-135m", help="preset, model folder, or a run's final/ or checkpoint model/ folder")
    gen.add_argument("--prompt", action="append", default=[], help="a user prompt (repeat for several)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.7, help="0 for greedy decoding")
    gen.add_argument("--top-p", type=float, default=0.9)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    score = sub.add_parser("score", help="score a data file with a trained reward model (one JSON line per record)")
    score.add_argument("--model", required=True, help="a reward model folder (a reward run's final/)")
    score.add_argument("--data", required=True, help="records: preference (chosen/rejected), ranking, or prompt + response")
    score.add_argument("--out", required=True, help="JSONL file to write")
    score.add_argument("--kind", default="auto", choices=("auto", "preference", "ranking", "sft"), help="data kind (auto: from the first row)")
    score.add_argument("--batch-size", type=int, default=16)
    score.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
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
        return cmd_stage(args.command, args)
    except AlignlabError as e:
        print(f"alignlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nalignlab: interrupted; the last complete checkpoint is kept: rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
