"""The ``label`` and ``data`` commands, as functions the main CLI wires in::

    add_label_commands(subparsers); add_data_commands(subparsers)      # building the parser
    run_label_command(args) / run_data_command(args)                  # args.command == "label" / "data"

``alignlab label --source simulated|judge|constitutional|human --policy P --prompts demo:prompts
--k 2 --out F [--gold demo] ...`` samples and labels (:func:`alignlab.feedback.sources.label`).
``alignlab data check FILE [--json] [--eval FILE] [--strict]`` checks a preference file
(:func:`alignlab.feedback.checks.check_preferences`).

Both raise :class:`~alignlab.errors.AlignlabError` for a user's mistake (the main CLI prints it
and exits 2) and return an exit status otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys

from alignlab.errors import ConfigError


def add_label_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``label`` to an ``argparse`` subparsers object; returns its parser."""
    from alignlab.feedback.sources import KINDS, SOURCES

    p = subparsers.add_parser(
        "label",
        help="sample responses from a policy and label them (simulated annotator, LLM judge, constitutional, human)",
        description="Sample --k responses per prompt from --policy, label them with --source, and write preference "
        "(k=2) or ranking (k>2) rows to --out, ready for the reward, dpo and other preference stages.",
    )
    p.add_argument("--source", choices=SOURCES, default="simulated", help="where labels come from (default: simulated)")
    p.add_argument(
        "--policy", default="smollm2-135m", help="preset (smollm2-135m, tiny) or model folder to sample from"
    )
    p.add_argument(
        "--prompts", default="demo:prompts", help="prompt data: a file or demo:<name> (default: demo:prompts)"
    )
    p.add_argument("--limit", type=int, default=None, help="use at most this many prompts")
    p.add_argument("--k", type=int, default=2, help="responses sampled per prompt (default: 2)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.add_argument(
        "--kind", choices=KINDS, default="auto", help="preference or ranking rows (auto: ranking when k > 2)"
    )
    g = p.add_argument_group("simulated annotator")
    g.add_argument(
        "--gold",
        default="demo",
        help="gold spec: a name, name(options), module:function or a sum like sentiment+0.5*concise",
    )
    g.add_argument(
        "--tau", type=float, default=1.0, help="Bradley-Terry temperature: P(a>b) = sigmoid((g(a)-g(b))/tau)"
    )
    g.add_argument("--position-bias", type=float, default=0.0, help="logit added for the first-shown response")
    g.add_argument("--tie-margin", type=float, default=0.0, help="|g(a)-g(b)| below this is a tie (not written)")
    g.add_argument("--flip-rate", type=float, default=0.0, help="probability that a label is reversed")
    g.add_argument("--annotators", type=int, default=1, help="panel size: each member labels every pair")
    g = p.add_argument_group("judge and constitutional")
    g.add_argument("--judge-model", default=None, help="judge preset or folder (default: smollm2-135m)")
    g.add_argument("--principles", default=None, help="principles YAML (default: the built-in set)")
    g.add_argument("--sft-out", default=None, help="where revision rows go (default: <out>.sft.jsonl)")
    g = p.add_argument_group("label store and humans")
    g.add_argument("--store", default=None, help="SQLite label store to record in (required for --source human)")
    g.add_argument("--annotator", default=None, help="your name: label in the terminal now (--source human)")
    g = p.add_argument_group("sampling")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.9, help="sampling temperature of the policy")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    return p


def run_label_command(args: argparse.Namespace) -> int:
    from alignlab.feedback.sources import label

    summary = label(
        args.source,
        out=args.out,
        policy=args.policy,
        prompts=args.prompts,
        k=args.k,
        limit=args.limit,
        kind=args.kind,
        gold=args.gold,
        tau=args.tau,
        position_bias=args.position_bias,
        tie_margin=args.tie_margin,
        flip_rate=args.flip_rate,
        annotators=args.annotators,
        judge_model=args.judge_model,
        principles=args.principles,
        sft_out=args.sft_out,
        store=args.store,
        annotator=args.annotator,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        device=args.device,
    )
    extra = ", ".join(
        f"{k} {v}" for k, v in summary.items() if k not in ("source", "rows", "out", "kind", "policy") and v is not None
    )
    print(f"{summary['source']}: {summary['rows']} {summary['kind']} rows -> {summary['out']} ({extra})")
    return 0


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``data`` (with ``data check``) to an ``argparse`` subparsers object; returns its parser."""
    from alignlab.feedback import checks

    p = subparsers.add_parser(
        "data", help="inspect data files", description="Inspect data files before training on them."
    )
    sub = p.add_subparsers(dest="data_command", metavar="{check}")
    sub.required = True
    c = sub.add_parser(
        "check",
        help="find problems in a preference file",
        description="Near-identical pairs, duplicates, length and position bias, annotator agreement, and prompts "
        "leaking into an eval file; each finding names file:line.",
    )
    c.add_argument("file", help="a preference file (any format alignlab reads) or demo:preferences")
    c.add_argument("--eval", default=None, help="an eval file whose prompts must not appear in FILE")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--strict", action="store_true", help="exit 1 when anything is flagged")
    c.add_argument(
        "--similar", type=float, default=checks.SIMILAR, help="character similarity that makes a pair near-identical"
    )
    c.add_argument(
        "--max-word-edits",
        type=int,
        default=checks.MAX_WORD_EDITS,
        help="pairs this few words apart are near-identical",
    )
    return p


def run_data_command(args: argparse.Namespace) -> int:
    from alignlab.feedback.checks import check_preferences, render

    if getattr(args, "data_command", None) != "check":
        raise ConfigError("alignlab data: give a subcommand: check")
    report = check_preferences(args.file, eval_path=args.eval, similar=args.similar, max_word_edits=args.max_word_edits)
    if args.json:
        json.dump(report, sys.stdout, indent=1, ensure_ascii=False, default=str)
        print()
    else:
        print(render(report))
    return 1 if args.strict and not report["ok"] else 0
