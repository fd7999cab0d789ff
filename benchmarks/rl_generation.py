"""Generation inside an RL stage against the compute limit: `alignlab grpo` as a user runs it.

    .venv/bin/python benchmarks/rl_generation.py                                   # bfloat16 and model dtype
    .venv/bin/python benchmarks/rl_generation.py --dtypes bfloat16 --prompts 64 --group-size 8

One rollout of ``--prompts`` prompts × ``--group-size`` samples (SmolLM2-135M with LoRA, the default
profile, ``rollout.max_new_tokens`` tokens at most, all rows in one decoding batch:
``rollout.generation_batch_size`` = prompts × group), one optimizer step, per
``rollout.sampling_dtype`` in ``--dtypes``. Figures are the stage's own, from its metrics file:
``gen_tokens_per_s`` (response tokens over the wall time of the sampling call, LoRA folding,
casting and prefill included) and ``gen_limit_frac`` (that over the compute limit: 2N FLOPs per
token at this machine's measured float32 ``torch.mm`` rate, :mod:`alignlab.rollout.throughput`),
``sampler/kl`` (bfloat16 only), the step's time split, and the process's peak RSS and wall time.
Results go to ``benchmarks/results/<--output>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402

LOWERCASE = "abcdefghijklmnopqrstuvwxyz"


def command(args, dtype: str, out_dir: str) -> list[str]:
    rows = args.prompts * args.group_size
    exe = Path(sys.executable).with_name("alignlab")
    return [
        str(exe),
        "grpo",
        "--profile",
        "default",
        "model.name_or_path=smollm2-135m",
        "model.lora.enabled=true",
        f"train.output_dir={out_dir}",
        f"train.run_name={dtype}",
        "train.max_steps=1",
        f"train.batch_size={args.prompts}",
        f"group_size={args.group_size}",
        f"mini_batch_size={rows}",
        "ppo_epochs=1",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.generation_batch_size={rows}",
        f"rollout.sampling_dtype={dtype}",
        "rollout.engine=transformers",
        "train.num_samples=0",
        "train.progress=false",
        "data.eval_fraction=0",
        "reward.source=char_fraction",
        f"reward.kwargs=[chars={LOWERCASE}]",
    ]


KEYS = ("gen_tokens_per_s", "gen_limit_frac", "sampler/kl", "response_length", "time/generation", "time/step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "model"], help="rollout.sampling_dtype values")
    p.add_argument("--prompts", type=int, default=128, help="prompts per rollout")
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="rollout.max_new_tokens (the RL default: 64)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--output", default="rl_generation")
    args = p.parse_args()
    import os

    args.threads = args.threads or os.cpu_count() or 1
    result = {**harness.result_header("rl_generation", args.threads), "settings": vars(args), "runs": []}
    with tempfile.TemporaryDirectory(prefix="alignlab-rlgen-") as tmp:
        for dtype in args.dtypes:
            out_dir = str(Path(tmp) / "runs")
            proc = harness.run_command(
                command(args, dtype, out_dir), threads=args.threads, timeout=args.timeout, tmp=Path(tmp), name=dtype
            )
            metrics = Path(out_dir) / dtype / "grpo" / "metrics.jsonl"
            row = next(json.loads(line) for line in metrics.read_text().splitlines() if '"train"' in line)
            run = {
                "sampling_dtype": dtype,
                **{k: round(row[k], 4) for k in KEYS if k in row},
                "peak_rss_mib": proc["max_rss_mib"],
                "wall_s": proc["wall_s"],
                "other_load_cores": proc["other_load_cores"],
            }
            if run.get("gen_limit_frac"):  # the limit this process measured (after its own sampling)
                run["limit_tokens_per_s"] = round(run["gen_tokens_per_s"] / run["gen_limit_frac"], 1)
            result["runs"].append(run)
            harness.log(
                f"{dtype}: {run['gen_tokens_per_s']:.0f} tok/s = {100 * run['gen_limit_frac']:.1f}% of the limit, "
                f"generation {run['time/generation']:.1f} s of a {run['time/step']:.1f} s step, "
                f"peak RSS {run['peak_rss_mib']:.0f} MiB"
            )
    path = harness.write_result(args.output, result)
    harness.log(f"wrote {path}")


if __name__ == "__main__":
    main()
