"""Reward-model accuracy on Anthropic HH-RLHF (harmless-base, test file), SmolLM2-135M + LoRA, CPU.

    benchmarks/.envs/trl/bin/python benchmarks/rm_hh_accuracy.py                 # 400 train / 200 held-out pairs
    .venv/bin/python benchmarks/rm_hh_accuracy.py --train-pairs 100 --eval-pairs 50 --max-length 96

Reads the first ``train + eval`` pairs of ``/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz``
(the file is read in place, never copied), splits them with alignlab's own held-out split
(``data.eval_fraction``: pairs sharing a prompt stay on one side, so the two parts share no
prompt; the script checks that), trains ``train_reward`` (Bradley–Terry, LoRA, the default
profile's reward settings, shorter sequences) for one epoch on the training part, and reports the
held-out pairwise accuracy that alignlab's evaluation computes at the end (ties count 1/2), next to
two reference points computed on the same held-out pairs: chance (0.5) and "the longer response
is preferred". Training runs in a child process (peak RSS measured as in the other benchmarks).
Writes ``benchmarks/results/rm_hh_accuracy.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness

SCRIPT = Path(__file__).resolve()
HH = "/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz"


def build_config(args) -> dict:
    from alignlab.config import RewardConfig, from_dict, to_dict, validate
    from alignlab.profiles import load_profile

    n = args.train_pairs + args.eval_pairs
    tree = harness.merge(
        load_profile("default")["reward"],
        {
            "model": {"name_or_path": "smollm2-135m", "dtype": "float32", "device": "cpu", "lora": {"enabled": True}},
            "data": {
                "train": args.data,
                "limit": n,
                "eval_fraction": args.eval_pairs / n,
                "max_length": args.max_length,
                "max_prompt_length": args.max_length // 2,
            },
            "train": {
                "run_name": "bench-rm-hh",
                "max_steps": 0,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "eval_every": 0,
                "save_every": 0,
                "log_every": 1,
                "progress": False,
                "seed": args.seed,
            },
            "norm_num_prompts": 0,  # no score normalisation: accuracy uses raw scores anyway
        },
    )
    cfg = from_dict(RewardConfig, tree)
    validate(cfg)
    return to_dict(cfg)


def describe_split(config: dict) -> dict:
    """Sizes of the two parts, their prompt overlap (must be 0) and the length baseline on held-out pairs."""
    import logging

    from alignlab.config import RewardConfig, from_dict
    from alignlab.trainers.common import load_split

    cfg = from_dict(RewardConfig, config)
    train, held = load_split(cfg.data, "preference", cfg.train.seed, logging.getLogger("bench"))
    shared = {r.prompt for r in train} & {r.prompt for r in held}
    longer = [
        1.0 if len(r.chosen) > len(r.rejected) else 0.5 if len(r.chosen) == len(r.rejected) else 0.0 for r in held
    ]
    return {
        "train_pairs": len(train),
        "heldout_pairs": len(held),
        "shared_prompts": len(shared),
        "baseline_longer_response_accuracy": sum(longer) / max(len(longer), 1),
    }


def worker(spec: dict) -> dict:
    from alignlab.config import RewardConfig, from_dict
    from alignlab.trainers.reward import train_reward
    from alignlab.trainers.run import read_metrics

    cfg = from_dict(RewardConfig, spec["config"])
    cfg.train.output_dir = spec["workdir"]
    clock = harness.StepClock()
    t0 = time.perf_counter()
    summary = train_reward(cfg)
    total = time.perf_counter() - t0
    clock.close()
    rows = read_metrics(Path(spec["workdir"]) / cfg.train.run_name / "reward")
    train_rows = [m for m in rows if m.get("split") == "train"]
    return {
        **clock.as_dict(),
        "train_reward_s": total,
        "summary": {
            k: summary.get(k)
            for k in (
                "steps",
                "train_loss",
                "train_accuracy",
                "eval",
                "train_items",
                "eval_pairs",
                "truncation",
                "skipped_steps",
            )
        },
        "train_loss_curve": [m.get("loss") for m in train_rows],
        "train_accuracy_curve": [m.get("accuracy") for m in train_rows],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", default=HH, help="HH-RLHF-style preference file (read in place)")
    p.add_argument("--train-pairs", type=int, default=400)
    p.add_argument("--eval-pairs", type=int, default=200)
    p.add_argument(
        "--max-length", type=int, default=96, help="tokens per response row (prompt cut from the left to half)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--output", default="rm_hh_accuracy")
    args = p.parse_args()
    if args.worker:
        spec = harness.read_spec(args.worker)
        return harness.write_report(spec, worker(spec))
    import os

    if not Path(args.data).is_file():
        sys.exit(f"{args.data}: not found")
    args.threads = args.threads or os.cpu_count() or 1
    config = build_config(args)
    split = describe_split(config)
    if split["shared_prompts"]:
        sys.exit(f"train and held-out parts share {split['shared_prompts']} prompts; refusing to report")
    harness.log(f"split: {split}")
    result = {
        **harness.result_header("rm_hh_accuracy", args.threads),
        "data": {"file": args.data, "first_records_used": args.train_pairs + args.eval_pairs, **split},
        "settings": {
            "model": "smollm2-135m",
            "lora": config["model"]["lora"],
            "loss": config["loss"],
            "max_length": config["data"]["max_length"],
            "max_prompt_length": config["data"]["max_prompt_length"],
            "batch_size": config["train"]["batch_size"],
            "epochs": config["train"]["epochs"],
            "lr": config["train"]["lr"],
            "warmup_steps": config["train"]["warmup_steps"],
        },
    }
    r = harness.run_worker(
        SCRIPT, {"name": "rm-hh", "framework": "alignlab", "config": config}, threads=args.threads, timeout=args.timeout
    )
    stamps = r.pop("stamps")
    r.pop("cpu_stamps")
    ev = r["summary"]["eval"] or {}
    result.update(
        {
            "heldout_accuracy": ev.get("accuracy"),
            "heldout_margin": ev.get("margin"),
            "heldout_ece": ev.get("ece"),
            "heldout_pairs_scored": ev.get("pairs"),
            "chance_accuracy": 0.5,
            "training_s": (stamps[-1] - stamps[0]) if len(stamps) > 1 else None,
            "steps": len(stamps),
            "run": r,
            "loadavg_end": harness.loadavg(),
        }
    )
    path = harness.write_result(args.output, result)
    harness.log(
        f"held-out accuracy {result['heldout_accuracy']} on {split['heldout_pairs']} pairs (trained on {split['train_pairs']}; "
        f"longer-response baseline {split['baseline_longer_response_accuracy']:.3f}); {r['wall_s']:.0f} s, peak RSS {r['max_rss_mib']:.0f} MiB; wrote {path}"
    )


if __name__ == "__main__":
    main()
