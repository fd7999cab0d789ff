"""Prefix sharing in `alignlab dpo`: tokens per step and steps/s with ``data.share_prompt`` on and off.

    .venv/bin/python benchmarks/prefix_sharing.py                        # demo and HH, shared and unshared
    .venv/bin/python benchmarks/prefix_sharing.py --datasets hh --steps 5 --model tiny

Each run is `alignlab dpo`'s own code path (``load_config(DPOConfig, ...)`` then ``train_dpo``) in a
fresh child process of this Python, on ``demo:preferences`` or the Anthropic HH-RLHF harmless-base
test split (read in place from ``/work/shared/data``), with the ``smollm2-135m`` preset when its
converted folder is in the alignlab cache (else ``tiny``), float32 on CPU. The runs differ only in
``data.share_prompt``; the pairs, their order and every other setting are the same.

* tokens per step: the token positions the policy's forward pass computes per optimizer step
  (``n_tokens`` of its batches: real tokens, a shared prompt counted once), and the padded
  positions (rows × width) the batch holds;
* steps/s: optimizer steps after ``--warmup`` warm-up steps over their wall seconds (a post-step
  hook stamps each step; the reference pass, model load and tokenisation are outside the window);
* the loss curves of both runs, which must agree (same maths, float32 sums in another order).

Results are merged by run name into ``benchmarks/results/prefix_sharing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "prefix_sharing.json"
HH = "/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz"
DATASETS = {"demo": "demo:preferences", "hh": HH}


def default_model() -> str:
    """smollm2-135m when its converted folder is cached (no 20 s conversion inside a timed run), else tiny."""
    try:
        from alignlab.models.presets import cache_dir

        if any((p / ".complete").is_file() for p in (cache_dir() / "models").glob("smollm2-135m-instruct-*")):
            return "smollm2-135m"
    except OSError:
        pass
    return "tiny"


def overrides(args, dataset: str, share: bool) -> list[str]:
    return [
        f"model.name_or_path={args.model}",
        "model.dtype=float32",
        "model.device=cpu",
        f"data.train={DATASETS[dataset]}",
        f"data.limit={args.batch_size * (args.warmup + args.steps)}",
        "data.eval_fraction=0",
        f"data.max_length={args.max_length}",
        f"data.max_prompt_length={args.max_length * 3 // 4}",
        f"data.share_prompt={str(share).lower()}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.warmup + args.steps}",
        "train.save_every=0",
        "train.eval_every=0",
        "train.num_samples=0",
        "train.progress=false",
        "train.log_every=1",
        "reference_cache=false",
    ]


# ----------------------------------------------------------------------------- the child
def worker(spec: dict) -> dict:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from alignlab.config import DPOConfig, load_config
    from alignlab.trainers import dpo
    from alignlab.trainers.run import read_metrics

    torch.set_num_threads(spec["threads"])
    cfg = load_config(DPOConfig, None, spec["overrides"] + [f"train.output_dir={spec['workdir']}"])
    batches: list[dict] = []
    plain_batch = dpo.PairSet.batch

    def counted(self, indices):  # instrumentation only: what each training micro-batch holds
        b = plain_batch(self, indices)
        batches.append({"n_tokens": b["n_tokens"], "cells": b["input_ids"].numel(), "rows": b["input_ids"].shape[0]})
        return b

    dpo.PairSet.batch = counted
    stamps: list[float] = []
    hook = register_optimizer_step_post_hook(lambda *a: stamps.append(time.perf_counter()))
    summary = dpo.train_dpo(cfg)
    hook.remove()
    train = batches[-(spec["warmup"] + spec["steps"]) :]  # the reference pass's batches came first
    w = spec["warmup"]
    rows = [m for m in read_metrics(summary["run_dir"]) if m.get("split") == "train"]
    timed = stamps[-1] - stamps[w - 1]
    return {
        "share_prompt": summary["share_prompt"],
        "steps_per_s": spec["steps"] / timed,
        "step_s": [round(b - a, 3) for a, b in zip(stamps[w - 1 : -1], stamps[w:])],
        "tokens_per_step": sum(b["n_tokens"] for b in train) / len(train),
        "padded_positions_per_step": sum(b["cells"] for b in train) / len(train),
        "rows_per_step": sum(b["rows"] for b in train) / len(train),
        "tokens_per_s": sum(b["n_tokens"] for b in train[w:]) / timed,
        "losses": [r["loss"] for r in rows],
    }


def run_child(spec: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="alignlab-prefix-") as tmp:
        spec = {**spec, "workdir": str(Path(tmp) / "runs")}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        out = Path(tmp) / "report.json"
        env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), TOKENIZERS_PARALLELISM="false")
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(Path(tmp) / "spec.json"), "--report", str(out)], env=env
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0) if timeout <= 0 else _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"{spec['name']}: timed out after {timeout:.0f} s") from None
        if os.waitstatus_to_exitcode(status) != 0 or not out.is_file():
            raise SystemExit(f"{spec['name']}: the run failed (exit {os.waitstatus_to_exitcode(status)})")
        report = json.loads(out.read_text())
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    report["max_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    return report


def _wait(proc, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model", default=None, help="a model preset or folder (default: smollm2-135m if cached, else tiny)"
    )
    p.add_argument("--datasets", default="demo,hh", help="comma list of: " + ", ".join(DATASETS))
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first (at least 1)")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--max-length", type=int, default=512, help="data.max_length (max_prompt_length: 3/4 of it)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run before it is killed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        Path(args.report).write_text(json.dumps(worker(spec)))
        return
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the timed window starts at the end of a step)")
    args.model = args.model or default_model()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}}
    for dataset in args.datasets.split(","):
        if dataset not in DATASETS:
            p.error(f"--datasets: unknown {dataset!r}; choose from {', '.join(DATASETS)}")
        if dataset == "hh" and not Path(HH).is_file():
            print(f"skipping hh: {HH} is not there", file=sys.stderr)
            continue
        pair = {}
        for share in (False, True):
            name = f"{dataset}-{'shared' if share else 'unshared'}"
            spec = {
                "name": name,
                "overrides": overrides(args, dataset, share),
                "threads": args.threads,
                "warmup": args.warmup,
                "steps": args.steps,
            }
            pair[share] = run_child(spec, args.timeout)
            print(f"{name}: {json.dumps({k: v for k, v in pair[share].items() if k != 'losses'})}", flush=True)
        u, s = pair[False], pair[True]
        load = os.getloadavg()[0]
        for share in (False, True):
            results["runs"][f"{dataset}-{'shared' if share else 'unshared'}"] = pair[share]
        results.setdefault("comparison", {})[dataset] = {
            "model": args.model,
            "pairs_per_step": args.batch_size,
            "max_length": args.max_length,
            "timed_steps": args.steps,
            "token_passes_saved": round(1 - s["tokens_per_step"] / u["tokens_per_step"], 3),
            "padded_positions_saved": round(1 - s["padded_positions_per_step"] / u["padded_positions_per_step"], 3),
            "steps_per_s_ratio": round(s["steps_per_s"] / u["steps_per_s"], 3),
            "loss_curve_max_abs_diff": max(abs(a - b) for a, b in zip(s["losses"], u["losses"])),
            "peak_rss_ratio": round(s["max_rss_mib"] / u["max_rss_mib"], 3),
            "threads": args.threads,
            "loadavg_1min_after": round(load, 2),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(f"{dataset}: {json.dumps(results['comparison'][dataset])}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
