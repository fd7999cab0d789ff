"""DPO as a user runs it, the whole command: ``alignlab dpo`` against a plain TRL script, wall time and memory.

    benchmarks/.envs/trl/bin/python benchmarks/dpo_command_vs_trl.py                 # 32 HH-RLHF pairs, len 256
    benchmarks/.envs/trl/bin/python benchmarks/dpo_command_vs_trl.py --pairs 16 --peers trl-precompute

The same pairs (the first ``--pairs`` rows of ``/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz``,
read in place), batch, number of steps (one epoch) and length (``--max-length``, prompt ≤ half),
SmolLM2-135M-Instruct, full fine-tuning, float32 on the CPU, lr 1e-6 (TRL's default), β 0.1.

* ``alignlab``: the ``alignlab dpo`` command (``alignlab.cli.main``) with ``--profile default`` and
  key=value settings: reference log-probs computed (``reference_cache=false``: no cache hit),
  a checkpoint (weights, optimizer, RNG) at the last step and the final model written; its
  default checkpointing (``auto``: selective) and prompt sharing.
* ``trl``: a plain script: ``DPOTrainer(model=<the same model folder>)`` with TRL's defaults (a
  reference copy loaded by TRL, full activation checkpointing, its own tokenisation of the
  conversational rows), except float32 (its ``bf16`` default is for GPUs), the same lr schedule and
  batch, and a checkpoint saved at the last step (``save_steps``) plus ``trainer.save_model()``.
* ``trl-precompute``: the same with ``precompute_ref_log_probs=True``.

Figures: ``wall_s`` (the whole process, from exec to exit), peak RSS (``wait4``), the process's
RSS every 0.25 s (``rss_samples``, seconds since start) and right after each optimizer step, and
for alignlab the clock time of each stage from its ``log.txt`` (``stages``, seconds since start),
which is how ``benchmarks/README.md`` splits the command's time and memory into parts. Writes
``benchmarks/results/dpo_command_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import harness

SCRIPT = Path(__file__).resolve()
PEERS = ["trl", "trl-precompute"]
HH = "/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz"


def overrides(args, output_dir: str) -> list[str]:
    """The key=value settings of the alignlab command (on top of ``--profile default``)."""
    return [
        "model.name_or_path=smollm2-135m",
        "model.lora.enabled=false",
        "model.dtype=float32",
        "model.device=cpu",
        f"data.train={args.data}",
        f"data.limit={args.pairs}",
        "data.eval_fraction=0",
        f"data.max_length={args.max_length}",
        f"data.max_prompt_length={args.max_length // 2}",
        f"train.output_dir={output_dir}",
        "train.run_name=bench",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.pairs // args.batch_size}",
        f"train.save_every={args.pairs // args.batch_size}",
        "train.lr=1e-6",
        "train.warmup_steps=0",
        "train.num_samples=0",
        "train.progress=false",
        f"train.seed={args.seed}",
        "beta=0.1",
        "reference_cache=false",
        *args.set,
    ]


def stage_config(args) -> dict:
    from alignlab.config import DPOConfig, load_config, to_dict
    from alignlab.profiles import load_profile

    return to_dict(load_config(DPOConfig, None, overrides(args, "runs"), base=load_profile("default")["dpo"]))


def _alignlab_checkpointing(args) -> str:
    from alignlab.config import DPOConfig, from_dict
    from alignlab.models.checkpointing import resolve_mode

    cfg = from_dict(DPOConfig, stage_config(args))
    mode = cfg.model.gradient_checkpointing
    return f"{resolve_mode(cfg.model)} ({mode})" if mode == "auto" else mode


# ----------------------------------------------------------------------------- workers
def worker_alignlab(spec: dict) -> dict:
    out = harness.cli_worker(spec)
    log = Path(spec["argv_output_dir"]) / "bench" / "dpo" / "log.txt"
    out["log"] = log.read_text(encoding="utf-8").splitlines()
    return out


def worker_trl(spec: dict) -> dict:
    start = time.perf_counter()
    import logging

    import datasets
    from trl import DPOConfig, DPOTrainer

    from alignlab.config import DPOConfig as AlignlabDPOConfig
    from alignlab.config import from_dict
    from alignlab.data.tokenize import messages_of
    from alignlab.models import presets
    from alignlab.trainers.common import load_split

    cfg = from_dict(AlignlabDPOConfig, spec["config"])
    records, _ = load_split(cfg.data, "preference", cfg.train.seed, logging.getLogger("bench"))
    rows = [
        {
            "prompt": messages_of(r.prompt),
            "chosen": [{"role": "assistant", "content": r.chosen}],
            "rejected": [{"role": "assistant", "content": r.rejected}],
        }
        for r in records
    ]
    args = harness.trl_training_args(cfg, spec["workdir"], gradient_checkpointing=True)  # TRL's default: on
    args.update(
        max_length=cfg.data.max_length,
        beta=cfg.beta,
        precompute_ref_log_probs=spec["framework"] == "trl-precompute",
        model_init_kwargs={"dtype": "float32"},
        save_strategy="steps",
        save_steps=cfg.train.max_steps,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=str(presets.smollm2_dir(progress=False)),
        args=DPOConfig(**args),
        train_dataset=datasets.Dataset.from_list(rows),
    )
    clock = harness.StepClock()
    trainer.train()
    clock.close()
    trainer.save_model(str(Path(spec["workdir"]) / "final"))
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {**clock.as_dict(), "start": start, "end": time.perf_counter(), "losses": [h["loss"] for h in logs]}


def worker_main(path: str) -> None:
    spec = harness.read_spec(path)
    fn = worker_alignlab if spec["framework"] == "alignlab" else worker_trl
    harness.write_report(spec, fn(spec))


# ----------------------------------------------------------------------------- stages and memory
def stages(log_lines: list[str], started_at: float) -> list[dict]:
    """alignlab's log lines as ``{"t": seconds since the process started, "what": message}``."""
    out = []
    for line in log_lines:
        try:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        out.append({"t": round(stamp - started_at, 2), "what": line[24:][:160]})
    return out


def rss_between(samples: list[list[float]], t0: float, t1: float) -> dict:
    """Lowest, highest and last sampled RSS (MiB) in [t0, t1] seconds."""
    window = [s[1] for s in samples if t0 <= s[0] <= t1]
    if not window:
        return {}
    return {"start": window[0], "min": min(window), "max": max(window), "end": window[-1]}


# alignlab's parts of the command, each ending at a log line (by its start) or an optimizer step
PARTS = [
    ("interpreter, imports, config", "data "),
    ("model load (+ the 4-D mask probe)", "loss "),
    ("tokenisation", "tokenised "),
    ("reference pass", "reference log-probs ready"),
    ("step 1 (optimizer state allocated)", "step:1"),
    ("steps 2..N", "step:-1"),
    ("checkpoint save (weights, optimizer, RNG)", "finished at step"),
    ("final model save and exit", "exit"),
]


def breakdown(run: dict) -> list[dict]:
    """alignlab's command split into :data:`PARTS`: seconds, and RSS (MiB) at the start, highest, at the end."""
    marks = {"exit": run["wall_s"], "step:1": run["step_end_s"][0], "step:-1": run["step_end_s"][-1]}
    for _, key in PARTS:
        if key not in marks:
            marks[key] = next((st["t"] for st in run["stages"] if st["what"].split(" ", 1)[-1].startswith(key)), None)
    out, t0 = [], 0.0
    for name, key in PARTS:
        t1 = marks[key]
        if t1 is None:
            continue
        window = rss_between(run["rss_samples"], t0, t1)
        out.append(
            {"part": name, "from_s": round(t0, 2), "to_s": round(t1, 2), "s": round(t1 - t0, 2), "rss_mib": window}
        )
        t0 = t1
    return out


def measure(args) -> dict:
    config = stage_config(args)
    runs = []
    for rep in range(args.repeats):
        for framework in ["alignlab", *args.peers]:
            name = f"dpo-command/{framework}/{rep}"
            with tempfile.TemporaryDirectory(prefix="alignlab-bench-dpocmd-") as out_dir:
                spec = {"name": name, "framework": framework}
                if framework == "alignlab":
                    spec.update(
                        argv=["dpo", "--profile", "default", *overrides(args, out_dir)], argv_output_dir=out_dir
                    )
                else:
                    spec["config"] = config
                r = harness.run_worker(SCRIPT, spec, threads=args.threads, timeout=args.timeout, sample_rss=True)
            stamps = r.pop("stamps")
            r.pop("cpu_stamps")
            step_s = [b - a for a, b in zip(stamps, stamps[1:])]
            offset = r["started_perf"]  # perf_counter is system-wide monotonic: child stamps - parent start
            run = {
                "framework": framework,
                "repeat": rep,
                "step_end_s": [round(s - offset, 2) for s in stamps],  # seconds since the process started
                "step_s": step_s,
                "steps_per_s_after_first": len(step_s) / sum(step_s),
                "rss_during_steps_mib": rss_between(r["rss_samples"], stamps[0] - offset, stamps[-1] - offset),
                **r,
            }
            if framework == "alignlab":
                run["command"] = "alignlab " + " ".join(spec["argv"]).replace(out_dir, "<tmp>")
                run["stages"] = stages(r.pop("log"), r["started_at"])
                run["parts"] = breakdown(run)
                for part in run["parts"]:
                    harness.log(f"  {part['part']}: {part['s']:.1f} s, RSS {part['rss_mib']}")
            runs.append(run)
            harness.log(
                f"{name}: wall {run['wall_s']:.0f} s, peak RSS {run['max_rss_mib']:.0f} MiB, "
                f"RSS in steps {run['rss_during_steps_mib']}, median step {statistics.median(step_s):.2f} s, "
                f"other load {run['other_load_cores']} cores"
            )
    return {
        "data": args.data,
        "pairs": args.pairs,
        "batch_size_pairs": args.batch_size,
        "steps": args.pairs // args.batch_size,
        "max_length": args.max_length,
        "beta": 0.1,
        "lr": 1e-6,
        "gradient_checkpointing": {"alignlab": _alignlab_checkpointing(args), "trl": "full (TRL's default)"},
        "alignlab_settings": list(args.set),
        "wall_s": harness.summarise(runs, "wall_s", peers=args.peers, lower_is_better=True),
        "peak_rss_mib": harness.summarise(runs, "max_rss_mib", peers=args.peers, lower_is_better=True),
        "targets": {"wall_speedup_min": 2.0, "peak_rss_ratio_max": 0.6},
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_run_args(p, output="dpo_command_vs_trl", peers=PEERS)
    p.add_argument("--data", default=HH, help="preference file (read in place)")
    p.add_argument("--pairs", type=int, default=32, help="pairs trained on (one epoch)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step (the default profile's)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sequence (prompt ≤ half)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more alignlab setting (repeatable; TRL's script takes the same batch and accumulation)",
    )
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.pairs % args.batch_size or args.pairs // args.batch_size < 2:
        p.error("--pairs must be a multiple of --batch-size, at least two batches")
    import os

    args.threads = args.threads or os.cpu_count() or 1
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    if any(x not in PEERS for x in args.peers):
        p.error(f"unknown peers: {args.peers}")
    result = harness.result_header("dpo_command_vs_trl", args.threads)
    t0 = time.perf_counter()
    result["config"] = measure(args)
    result["loadavg_end"] = harness.loadavg()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    path = harness.write_result(args.output, result)
    c = result["config"]
    w, mem = c["wall_s"], c["peak_rss_mib"]
    if not args.peers:  # alignlab alone (e.g. to compare a change with an earlier file)
        return harness.log(f"ours {w['ours']:.0f} s, peak RSS {mem['ours']:.0f} MiB; wrote {path}")
    harness.log(
        f"ours {w['ours']:.0f} s vs {w['best_peer']} {w['peer']:.0f} s (speed-up x{w['peer'] / w['ours']:.2f}, target >= 2); "
        f"peak RSS {mem['ours']:.0f} vs {mem['best_peer']} {mem['peer']:.0f} MiB (x{mem['ratio']:.2f}, target <= 0.6)"
    )
    harness.log(f"wrote {path} ({result['total_s']} s; load {result['loadavg_start']} -> {result['loadavg_end']})")


if __name__ == "__main__":
    main()
