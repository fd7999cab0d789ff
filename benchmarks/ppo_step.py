"""PPO step time on CPU: SmolLM2-135M-Instruct with LoRA, split into generation / scoring / training.

    .venv/bin/python benchmarks/ppo_step.py                          # 1 warm-up + 3 timed steps
    .venv/bin/python benchmarks/ppo_step.py --steps 1 --warmup 0      # a quick check that it works
    .venv/bin/python benchmarks/ppo_step.py --model tiny --steps 10   # the random tiny model

Runs alignlab's own ``train_ppo`` (the default profile's ``ppo`` section, started from the
SmolLM2 preset instead of the SFT stage's output so it runs on its own) with float32 on the CPU
and reads the per-step timings the trainer logs in ``metrics.jsonl``:

* ``generation``  sampling the rollout (``model.generate``, KV cache, left padding);
* ``scoring``     the reward source (the house-style rule: negligible by design);
* ``logprobs``    the no-grad pass for old log-probs, reference log-probs (adapter off) and values;
* ``training``    ``ppo_epochs`` × minibatches of forward + backward + AdamW.

The first ``--warmup`` steps are left out of the figures (one-off costs: allocator, first
``generate``). Generation throughput = response tokens of the timed steps / their generation
seconds. Writes ``benchmarks/results/ppo_step.json`` (config, machine, every step, medians) and
prints the summary. Model loading, imports and the final save are outside every timed window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PARTS = ("generation", "scoring", "logprobs", "training")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="preset or model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument(
        "--lora",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="train LoRA adapters (default) or all weights",
    )
    p.add_argument("--steps", type=int, default=3, help="timed PPO steps (rollouts)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per rollout")
    p.add_argument("--mini-batch-size", type=int, default=4, help="rows per optimizer step")
    p.add_argument("--ppo-epochs", type=int, default=1, help="passes over each rollout")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated at most per response")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--output", default=str(ROOT / "results" / "ppo_step.json"), help="where to write the figures")
    return p.parse_args(argv)


def run(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from alignlab.config import PPOConfig, load_config
    from alignlab.profiles import load_profile
    from alignlab.trainers.ppo import train_ppo
    from alignlab.trainers.run import read_metrics

    base = load_profile("default")["ppo"]
    with tempfile.TemporaryDirectory(prefix="alignlab-bench-ppo-") as tmp:
        overrides = [
            f"model.name_or_path={args.model}",
            f"model.lora.enabled={str(args.lora).lower()}",
            "model.dtype=float32",
            "model.device=cpu",
            f"train.output_dir={tmp}",
            "train.run_name=bench",
            f"train.max_steps={args.warmup + args.steps}",
            f"train.batch_size={args.batch_size}",
            "train.save_every=0",
            "train.eval_every=0",
            "train.num_samples=0",
            "train.progress=false",
            "data.eval_fraction=0",
            f"mini_batch_size={args.mini_batch_size}",
            f"ppo_epochs={args.ppo_epochs}",
            f"rollout.max_new_tokens={args.max_new_tokens}",
            "rollout.engine=transformers",
        ]
        cfg = load_config(PPOConfig, None, overrides, base=base)
        t0 = time.perf_counter()
        summary = train_ppo(cfg)
        wall = time.perf_counter() - t0
        rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    timed = rows[args.warmup :] or rows
    tokens = [r["response_length"] * args.batch_size for r in timed]
    gen_s = sum(r["time/generation"] for r in timed)
    result = {
        "benchmark": "ppo_step",
        "config": {k: v for k, v in vars(args).items() if k != "output"},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "steps": [
            {
                "step": r["step"],
                **{p: r[f"time/{p}"] for p in PARTS},
                "step_s": r["time/step"],
                "tokens": r["response_length"] * args.batch_size,
                "score": r["score"],
                "kl": r["kl"],
            }
            for r in rows
        ],
        "median_s": {p: statistics.median(r[f"time/{p}"] for r in timed) for p in PARTS}
        | {"step": statistics.median(r["time/step"] for r in timed)},
        "generated_tokens_per_s": sum(tokens) / max(gen_s, 1e-9),
        "wall_s_including_load": wall,
        "timed_steps": len(timed),
    }
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    m = result["median_s"]
    print(
        f"ppo step on {args.model} ({'LoRA' if args.lora else 'full'}), {args.batch_size} prompts x {args.max_new_tokens} new tokens, "
        f"{result['machine']['threads']} threads, {result['timed_steps']} timed steps (median seconds):"
    )
    for p in (*PARTS, "step"):
        print(f"  {p:<11} {m[p]:8.2f}")
    print(f"  generated tokens/s {result['generated_tokens_per_s']:.1f}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
