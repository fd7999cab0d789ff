"""SFT training throughput on CPU: alignlab's ``train_sft`` against TRL's ``SFTTrainer``.

    benchmarks/.envs/trl/bin/python benchmarks/sft_throughput.py                  # tiny, smollm2 LoRA, smollm2 full
    benchmarks/.envs/trl/bin/python benchmarks/sft_throughput.py --configs tiny --steps 10

Both frameworks get the same model weights (alignlab's ``load_model``: the seeded ``tiny`` preset
or the SmolLM2-135M-Instruct safetensors folder), the same token ids (alignlab tokenises the demo
data once through the chat template; TRL receives those ``input_ids`` with a ``completion_mask``
so its loss covers the response tokens only), the same batches in the same order (alignlab's data
order; TRL reads them with a sequential sampler), batch size, sequence length, number of steps,
float32, AdamW, gradient clipping at 1.0, and the same thread count. Activation checkpointing is
off on both sides in the default configs (TRL's default is full checkpointing, alignlab's is
selective); ``smollm2-lora-defaults`` runs each framework with its own default.

Throughput = (prompt + response tokens of the timed steps) / (seconds of the timed steps), the
timed steps being those after ``--warmup`` warm-up steps (see ``harness``: model load, imports
and tokenisation are outside the window). Runs alternate ours, theirs, ours, theirs, ... and the
medians are reported. Writes ``benchmarks/results/sft_throughput.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import harness

SCRIPT = Path(__file__).resolve()

NO_CKPT = {"model": {"gradient_checkpointing": "none"}}
# name -> (profile, what changes from that profile's sft section, TRL's gradient_checkpointing)
CONFIGS = {
    "tiny": ("tiny", {}, False),
    "smollm2-lora": ("default", NO_CKPT, False),
    "smollm2-full": (
        "default",
        harness.merge(NO_CKPT, {"model": {"lora": {"enabled": False}}, "train": {"lr": 2.0e-5}}),
        False,
    ),
    # not in the default list: each framework as it is set up by default (alignlab selective, TRL full checkpointing)
    "smollm2-lora-defaults": ("default", {}, True),
}


def steps_for(name: str, args) -> int:
    return args.tiny_steps if name == "tiny" and getattr(args, "tiny_steps", 0) else args.steps


def build_config(name: str, args) -> dict:
    """The alignlab SFT config (a plain dict) both frameworks are set up from."""
    from alignlab.profiles import load_profile

    profile, changes, _ = CONFIGS[name]
    tree = harness.merge(load_profile(profile)["sft"], changes)
    forced = {
        "model": {"dtype": "float32", "device": "cpu"},
        "train": {
            "run_name": f"bench-{name}",
            "max_steps": args.warmup + steps_for(name, args),
            "grad_accum": 1,
            "eval_every": 0,
            "save_every": 0,
            "num_samples": 0,
            "log_every": 1,
            "progress": False,
            "seed": args.seed,
        },
    }
    if args.batch_size:
        forced["train"]["batch_size"] = args.batch_size
    if args.max_length:
        forced["data"] = {
            "max_length": args.max_length,
            "max_prompt_length": min(args.max_length // 2, tree["data"].get("max_prompt_length", 384)),
        }
    from alignlab.config import SFTConfig

    return harness.stage_config(SFTConfig, harness.merge(tree, forced))


def make_plan(config: dict) -> dict:
    """The exact batches alignlab's loop will train on, in order (its split, tokenisation and data order)."""
    import logging

    from alignlab.config import SFTConfig, from_dict
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.models.load import load_model
    from alignlab.trainers.common import load_split, seed_everything
    from alignlab.trainers.loop import DataOrder

    cfg = from_dict(SFTConfig, config)
    seed_everything(cfg.train.seed)
    train_records, _ = load_split(cfg.data, "sft", cfg.train.seed, logging.getLogger("bench"))
    tokenizer = load_model(cfg.model, seed=cfg.train.seed).tokenizer
    examples, stats = tokenize_sft(
        train_records, tokenizer, max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length
    )
    order = DataOrder(len(examples), cfg.train.batch_size, cfg.train.seed)
    rows, per_step = [], []
    for k in range(cfg.train.max_steps):
        batch = [examples[i] for i in order.batch(k)]
        if len(batch) != cfg.train.batch_size:
            sys.exit(
                f"step {k + 1}: a short batch ({len(batch)} rows); pick steps/batch size that stay within full batches"
            )
        for ex in batch:
            rows.append(
                {"input_ids": ex.input_ids, "completion_mask": [0] * len(ex.prompt_ids) + [1] * len(ex.response_ids)}
            )
        per_step.append(
            {
                "tokens": sum(len(ex.input_ids) for ex in batch),
                "response_tokens": sum(len(ex.response_ids) for ex in batch),
                "padded_width": max(len(ex.input_ids) for ex in batch),
            }
        )
    return {
        "rows": rows,
        "per_step": per_step,
        "train_examples": len(examples),
        "truncation": stats.as_dict(),
        "trl_template_check": _template_check(tokenizer, train_records[:32], examples[:32]),
    }


def _template_check(tokenizer, records, examples) -> dict:
    """How TRL's own tokenisation of these records (chat template over prompt + completion) compares.

    Informational: the benchmark feeds TRL alignlab's token ids, so this only documents whether
    letting TRL tokenise would have given the same ids.
    """
    from alignlab.data.tokenize import messages_of

    same, differs = 0, []
    for rec, ex in zip(records, examples):
        msgs = messages_of(rec.prompt) + [{"role": "assistant", "content": rec.response}]
        ids = list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False))
        if ids == ex.input_ids:
            same += 1
        elif not differs:
            common = ids[: len(ex.input_ids)] == ex.input_ids
            differs.append(
                {
                    "alignlab_tail": tokenizer.decode(ex.input_ids[-3:]),
                    "trl_tail": tokenizer.decode(ids[-3:]),
                    "alignlab_is_prefix_of_trl": common,
                    "extra_tokens_in_trl": len(ids) - len(ex.input_ids),
                }
            )
    return {"checked": len(examples), "identical": same, "first_difference": differs[0] if differs else None}


# ----------------------------------------------------------------------------- workers
def worker_alignlab(spec: dict) -> dict:
    from alignlab.config import SFTConfig, from_dict
    from alignlab.trainers.run import read_metrics
    from alignlab.trainers.sft import train_sft

    cfg = from_dict(SFTConfig, spec["config"])
    cfg.train.output_dir = spec["workdir"]
    clock = harness.StepClock()
    summary = train_sft(cfg, stop_after=cfg.train.max_steps)  # stop right after the last step: no final eval/save
    clock.close()
    rows = [m for m in read_metrics(Path(spec["workdir"]) / cfg.train.run_name / "sft") if m.get("split") == "train"]
    return {
        **clock.as_dict(),
        "losses": [m["loss"] for m in rows],
        "response_tokens": [m.get("tokens") for m in rows],
        "steps": summary["steps"],
        "skipped_steps": summary["skipped_steps"],
    }


def worker_trl(spec: dict) -> dict:
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    from alignlab.config import SFTConfig, from_dict
    from alignlab.models.load import load_model

    cfg = from_dict(SFTConfig, spec["config"])
    lora = cfg.model.lora
    use_lora = lora.enabled
    cfg.model.lora.enabled = False  # TRL applies the adapters itself (peft_config), as its users do
    cfg.model.gradient_checkpointing = "none"  # TRL's own switch decides (spec["trl_gradient_checkpointing"])
    loaded = load_model(cfg.model, seed=cfg.train.seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    dataset = datasets.Dataset.from_list(spec["plan_rows"])
    args = TRLSFTConfig(
        **harness.trl_training_args(cfg, spec["workdir"], gradient_checkpointing=spec["trl_gradient_checkpointing"]),
        max_length=cfg.data.max_length,
        completion_only_loss=True,
        packing=False,
        logging_steps=1,  # alignlab writes metrics every step too
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    peft_config = None
    if use_lora:
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    clock = harness.StepClock()
    trainer.train()
    clock.close()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        **clock.as_dict(),
        "losses": [h["loss"] for h in logs],
        "steps": trainer.state.global_step,
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
        "optim_arg": str(args.optim),
        "loss_type": args.loss_type,
    }


def worker_main(path: str) -> None:
    spec = harness.read_spec(path)
    fn = worker_alignlab if spec["framework"] == "alignlab" else worker_trl
    report = fn(spec)
    harness.write_report(spec, report)


# ----------------------------------------------------------------------------- the benchmark
def measure(name: str, args) -> dict:
    config = build_config(name, args)
    plan = make_plan(config)
    timed = plan["per_step"][args.warmup :]
    timed_tokens = sum(s["tokens"] for s in timed)
    work = [s["tokens"] for s in plan["per_step"]]
    runs = []
    repeats = args.tiny_repeats if name == "tiny" else args.repeats
    for rep in range(repeats):
        for framework in ("alignlab", "trl"):
            spec = {
                "name": f"{name}/{framework}/{rep}",
                "framework": framework,
                "config": config,
                "plan_rows": plan["rows"] if framework == "trl" else None,
                "trl_gradient_checkpointing": CONFIGS[name][2],
            }
            r = harness.run_worker(SCRIPT, spec, threads=args.threads, timeout=args.timeout)
            t = harness.timing(r, args.warmup, work)
            r.pop("stamps"), r.pop("cpu_stamps")
            run = {
                "framework": framework,
                "repeat": rep,
                "tokens_per_s": t["rate"],
                "tokens_per_s_steps": t["step_rates"],
                "tokens_per_cpu_s": t["rate_per_cpu_s"],
                "timed_s": t["timed_s"],
                "timed_cpu_s": t["timed_cpu_s"],
                "step_s": t["step_s"],
                **r,
            }
            if framework == "alignlab":  # cross-check: alignlab trained on the planned batches
                planned = [s["response_tokens"] for s in plan["per_step"]]
                if [int(x) for x in run["response_tokens"]] != planned:
                    raise RuntimeError(
                        f"{spec['name']}: alignlab's batches differ from the plan: {run['response_tokens']} vs {planned}"
                    )
            runs.append(run)
            harness.log(
                f"{spec['name']}: {run['tokens_per_s']:.0f} tok/s (median step {t['rate_step_median']:.0f}, per CPU-s {t['rate_per_cpu_s']:.0f}), "
                f"peak RSS {run['max_rss_mib']:.0f} MiB, first loss {run['losses'][0] if run['losses'] else float('nan'):.4f}, other load {run['other_load_cores']} cores"
            )
    ours0 = [r["losses"][0] for r in runs if r["framework"] == "alignlab"]
    theirs0 = [r["losses"][0] for r in runs if r["framework"] == "trl"]
    return {
        "name": name,
        "model": config["model"]["name_or_path"],
        "lora": config["model"]["lora"]["enabled"],
        "gradient_checkpointing": {
            "alignlab": config["model"]["gradient_checkpointing"],
            "trl": "full" if CONFIGS[name][2] else "none",
        },
        "batch_size": config["train"]["batch_size"],
        "max_length": config["data"]["max_length"],
        "max_prompt_length": config["data"]["max_prompt_length"],
        "lr": config["train"]["lr"],
        "warmup_steps_excluded": args.warmup,
        "timed_steps": steps_for(name, args),
        "timed_tokens": timed_tokens,
        "timed_response_tokens": sum(s["response_tokens"] for s in timed),
        "padded_widths": [s["padded_width"] for s in plan["per_step"]],
        "train_examples": plan["train_examples"],
        "trl_template_check": plan["trl_template_check"],
        "tokens_per_s": harness.summarise(runs, "tokens_per_s", peers=["trl"]),
        "tokens_per_s_step_median": harness.pooled_median(runs, "tokens_per_s_steps", peers=["trl"]),
        "tokens_per_cpu_s": harness.summarise(runs, "tokens_per_cpu_s", peers=["trl"]),
        "peak_rss_mib": harness.summarise(runs, "max_rss_mib", peers=["trl"], lower_is_better=True),
        "first_step_loss": {"alignlab": ours0, "trl": theirs0},
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument(
        "--configs", default="tiny,smollm2-lora,smollm2-full", help=f"comma-separated, from {', '.join(CONFIGS)}"
    )
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run (after the warm-up)")
    p.add_argument("--tiny-repeats", type=int, default=5, help="runs per framework for the tiny config (cheap)")
    p.add_argument(
        "--tiny-steps", type=int, default=10, help="timed steps for the tiny config (its steps take milliseconds)"
    )
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps run first and left out of the timing (>= 1)")
    p.add_argument("--repeats", type=int, default=2, help="runs per framework, alternating ours/theirs")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads in every run (0: all cores; see README: why 1)"
    )
    p.add_argument("--batch-size", type=int, default=0, help="override the profile's batch size")
    p.add_argument(
        "--max-length", type=int, default=0, help="override the profile's max_length (max_prompt_length = half)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    p.add_argument("--output", default="sft_throughput", help="results/<output>.json")
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the window starts at the end of a step)")
    import os

    args.threads = args.threads or os.cpu_count() or 1
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    result = {**harness.result_header("sft_throughput", args.threads), "configs": []}
    t0 = time.perf_counter()
    for name in names:
        harness.log(f"config {name}")
        result["configs"].append(measure(name, args))
    result["loadavg_end"] = harness.loadavg()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    path = harness.write_result(args.output, result)
    for c in result["configs"]:
        tp, st, mem = c["tokens_per_s"], c["tokens_per_s_step_median"], c["peak_rss_mib"]
        harness.log(
            f"{c['name']}: ours {tp['ours']:.0f} tok/s vs TRL {tp['peer']:.0f} (x{tp['ratio']:.2f}; median step x{st['ratio']:.2f}); "
            f"peak RSS {mem['ours']:.0f} vs {mem['peer']:.0f} MiB (x{mem['ratio']:.2f})"
        )
    harness.log(f"wrote {path} ({result['total_s']} s; load {result['loadavg_start']} -> {result['loadavg_end']})")


if __name__ == "__main__":
    main()
