"""DPO on CPU: alignlab's ``train_dpo`` against TRL's ``DPOTrainer``: steps/s, peak memory, agreement.

    benchmarks/.envs/trl/bin/python benchmarks/dpo_vs_trl.py                        # tiny, then smollm2-135m full
    benchmarks/.envs/trl/bin/python benchmarks/dpo_vs_trl.py --configs tiny --steps 6

Same model weights (alignlab's ``load_model``), same pairs in the same order (alignlab tokenises
``demo:preferences`` through the chat template and picks the batches; TRL gets those
``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` as they are and reads them with a sequential
sampler), batch size, sequence length, full fine-tuning, float32, sigmoid DPO loss with the same
β, AdamW, clipping at 1.0, no warm-up (so step 1 already moves the weights), same thread count.

Activation checkpointing: each framework as it is set up by default in ``smollm2-full``, i.e.
alignlab's selective checkpointing (it keeps matmul and attention outputs and recomputes only
element-wise ops; no matmul runs twice) against TRL without checkpointing (transformers offers
only full checkpointing, which reruns every layer). ``smollm2-full-gc`` runs both with full
per-layer checkpointing, the least memory either framework offers (and TRL's ``trl`` set-up there
is its shipped default: ``DPOConfig.gradient_checkpointing`` defaults to True);
``smollm2-full-none`` (not in the default list) runs both without checkpointing.

TRL is measured in two set-ups and alignlab's ratio is taken against the better one per figure:

* ``trl``: its default for full fine-tuning: a second, frozen copy of the model as π_ref,
  evaluated in every step;
* ``trl-precompute``: ``precompute_ref_log_probs=True``: π_ref's log-probs computed in one pass
  before training (what alignlab always does), so no second copy is held in training.

Reference passes (alignlab's and TRL's precompute) run before the first optimizer step, so they
are outside the timed window; each run's ``wall_s`` (the whole process) includes them. alignlab's
on-disk reference cache is off, so every run computes its reference log-probs.

Agreement: at step 1 policy == reference, so every framework's loss is log 2 whatever its
log-probs are. The check that means something compares the step-1 policy log-probs (mean over
the batch of summed response log-probs, chosen and rejected), the step-1 gradient norm, and the
loss at step 2, i.e. after one identical optimizer step. Writes ``benchmarks/results/dpo_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import harness

SCRIPT = Path(__file__).resolve()
PEERS = ["trl", "trl-precompute"]

# name -> (profile, what changes from that profile's dpo section)
CONFIGS = {
    "tiny": ("tiny", {}),
    "smollm2-full": (
        "default",
        {"model": {"name_or_path": "smollm2-135m", "lora": {"enabled": False}}, "train": {"lr": 1.0e-6}},
    ),
    # like for like without checkpointing: where alignlab stands before its selective mode
    "smollm2-full-none": (
        "default",
        {
            "model": {"name_or_path": "smollm2-135m", "lora": {"enabled": False}, "gradient_checkpointing": "none"},
            "train": {"lr": 1.0e-6},
        },
    ),
    # both frameworks with full per-layer activation checkpointing (the least memory either offers)
    "smollm2-full-gc": (
        "default",
        {
            "model": {"name_or_path": "smollm2-135m", "lora": {"enabled": False}, "gradient_checkpointing": "full"},
            "train": {"lr": 1.0e-6},
        },
    ),
    # Not in the default set: LoRA with dropout off (TRL's DPOTrainer turns dropout off by default).
    "smollm2-lora": ("default", {"model": {"name_or_path": "smollm2-135m", "lora": {"enabled": True, "dropout": 0.0}}}),
}


def build_config(name: str, args) -> dict:
    from alignlab.config import DPOConfig
    from alignlab.profiles import load_profile

    profile, changes = CONFIGS[name]
    tree = harness.merge(load_profile(profile)["dpo"], changes)
    steps = args.warmup + args.steps
    batch_size = args.batch_size or tree["train"]["batch_size"]
    forced = {
        "model": {"dtype": "float32", "device": "cpu"},
        # exactly the pairs the steps use: one epoch, no held-out set (so no eval reference pass)
        "data": {"limit": steps * batch_size, "eval_fraction": 0.0},
        "train": {
            "run_name": f"bench-{name}",
            "max_steps": steps,
            "batch_size": batch_size,
            "grad_accum": 1,
            "warmup_steps": 0,
            "eval_every": 0,
            "save_every": 0,
            "num_samples": 0,
            "log_every": 1,
            "progress": False,
            "seed": args.seed,
        },
        "loss": "dpo",
        "reference_cache": False,
    }
    if args.beta:
        forced["beta"] = args.beta
    if args.max_length:
        forced["data"].update(max_length=args.max_length, max_prompt_length=args.max_length // 2)
    return harness.stage_config(DPOConfig, harness.merge(tree, forced))


def make_plan(config: dict) -> dict:
    """The pairs alignlab's loop will train on, step by step (its split, tokenisation and data order)."""
    import logging

    from alignlab.config import DPOConfig, from_dict
    from alignlab.data.tokenize import tokenize_pairs
    from alignlab.models.load import load_model
    from alignlab.trainers.common import load_split, seed_everything
    from alignlab.trainers.loop import DataOrder

    cfg = from_dict(DPOConfig, config)
    seed_everything(cfg.train.seed)
    records, _ = load_split(cfg.data, cfg.data_kind, cfg.train.seed, logging.getLogger("bench"))
    cfg.model.lora.enabled = False
    tokenizer = load_model(cfg.model, seed=cfg.train.seed).tokenizer
    pairs, stats = tokenize_pairs(
        records, tokenizer, max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length
    )
    order = DataOrder(len(pairs), cfg.train.batch_size, cfg.train.seed)
    rows, per_step = [], []
    for k in range(cfg.train.max_steps):
        batch = [pairs[i] for i in order.batch(k)]
        if len(batch) != cfg.train.batch_size:
            sys.exit(f"step {k + 1}: a short batch ({len(batch)} pairs of {len(pairs)}); pick other steps/batch size")
        rows.extend(
            {"prompt_ids": p.prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids} for p in batch
        )
        per_step.append(
            {
                "tokens": sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in batch),
                "padded_width": max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in batch),
            }
        )
    return {"rows": rows, "per_step": per_step, "pairs": len(pairs), "truncation": stats.as_dict()}


# ----------------------------------------------------------------------------- workers
STAT_KEYS = ("loss", "logps/chosen", "logps/rejected", "grad_norm")


def worker_alignlab(spec: dict) -> dict:
    from alignlab.config import DPOConfig, from_dict
    from alignlab.trainers.dpo import train_dpo
    from alignlab.trainers.run import read_metrics

    cfg = from_dict(DPOConfig, spec["config"])
    cfg.train.output_dir = spec["workdir"]
    clock = harness.StepClock()
    summary = train_dpo(cfg, stop_after=cfg.train.max_steps)  # stop right after the last step: no final eval/save
    clock.close()
    rows = [m for m in read_metrics(Path(spec["workdir"]) / cfg.train.run_name / "dpo") if m.get("split") == "train"]
    return {
        **clock.as_dict(),
        "stats": {k: [m.get(k) for m in rows] for k in STAT_KEYS},
        "skipped_steps": summary["skipped_steps"],
    }


def worker_trl(spec: dict) -> dict:
    import datasets
    from peft import LoraConfig
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    from alignlab.config import DPOConfig, from_dict
    from alignlab.models.load import load_model

    class PretokenisedDPOTrainer(DPOTrainer):
        """DPOTrainer fed rows that already hold prompt_ids / chosen_ids / rejected_ids (alignlab's ids)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    cfg = from_dict(DPOConfig, spec["config"])
    precompute = spec["framework"] == "trl-precompute"
    lora = cfg.model.lora
    use_lora = lora.enabled
    cfg.model.lora.enabled = False  # TRL applies the adapters itself (peft_config)
    full_checkpointing = cfg.model.gradient_checkpointing == "full"
    cfg.model.gradient_checkpointing = "none"  # TRL's own switch decides (full or none: it has no selective mode)
    loaded = load_model(cfg.model, seed=cfg.train.seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    ref_model = None
    if not use_lora and not precompute:  # TRL's default for full fine-tuning: a frozen second copy
        ref_model = load_model(cfg.model, seed=cfg.train.seed, for_training=False).model
        ref_model.eval().requires_grad_(False)
    args = TRLDPOConfig(
        **harness.trl_training_args(cfg, spec["workdir"], gradient_checkpointing=full_checkpointing),
        max_length=cfg.data.max_length,
        beta=cfg.hyperparameters()["beta"],
        loss_type=["sigmoid"],
        precompute_ref_log_probs=precompute,
        logging_steps=1,
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
    dataset = datasets.Dataset.from_list(spec["plan_rows"])
    trainer = PretokenisedDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    clock = harness.StepClock()
    trainer.train()
    clock.close()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    return {
        **clock.as_dict(),
        "stats": {k: [h.get(k) for h in logs] for k in STAT_KEYS},
        "optimizer": f"{type(inner).__name__} ({args.optim})",
    }


def worker_main(path: str) -> None:
    spec = harness.read_spec(path)
    fn = worker_alignlab if spec["framework"] == "alignlab" else worker_trl
    harness.write_report(spec, fn(spec))


# ----------------------------------------------------------------------------- agreement
def agreement(runs: list[dict], tol_loss: float, tol_logp_rel: float) -> dict:
    """alignlab's first run against each peer's first run (see the module docstring)."""
    ours = next(r for r in runs if r["framework"] == "alignlab")["stats"]
    out = {
        "step1_loss_alignlab": ours["loss"][0],
        "log2": math.log(2),
        "tolerance_loss_abs": tol_loss,
        "tolerance_logps_rel": tol_logp_rel,
    }
    for peer in PEERS:
        theirs = next((r for r in runs if r["framework"] == peer), None)
        if theirs is None:
            continue
        t = theirs["stats"]
        row = {
            "step1_loss": t["loss"][0],
            "step1_loss_abs_diff": abs(ours["loss"][0] - t["loss"][0]),
            "step1_grad_norm": [ours["grad_norm"][0], t["grad_norm"][0]],
        }
        for key in ("logps/chosen", "logps/rejected"):
            a, b = ours[key][0], t[key][0]
            row[f"step1_{key}"] = [a, b]
            row[f"step1_{key}_rel_diff"] = abs(a - b) / max(abs(a), 1e-12)
        if len(ours["loss"]) > 1 and len(t["loss"]) > 1:
            row["step2_loss"] = [ours["loss"][1], t["loss"][1]]
            row["step2_loss_abs_diff"] = abs(ours["loss"][1] - t["loss"][1])
            row["step2_moved_from_log2"] = abs(ours["loss"][1] - math.log(2))
        row["agree"] = bool(
            row["step1_loss_abs_diff"] <= tol_loss
            and row["step1_logps/chosen_rel_diff"] <= tol_logp_rel
            and row["step1_logps/rejected_rel_diff"] <= tol_logp_rel
            and row.get("step2_loss_abs_diff", 0.0) <= tol_loss
        )
        out[peer] = row
    return out


# ----------------------------------------------------------------------------- the benchmark
def measure(name: str, args) -> dict:
    config = build_config(name, args)
    plan = make_plan(config)
    runs = []
    for rep in range(args.repeats):
        for framework in ["alignlab", *args.peers]:
            spec = {
                "name": f"{name}/{framework}/{rep}",
                "framework": framework,
                "config": config,
                "plan_rows": plan["rows"] if framework != "alignlab" else None,
            }
            r = harness.run_worker(SCRIPT, spec, threads=args.threads, timeout=args.timeout)
            t = harness.timing(r, args.warmup, [1.0] * len(plan["per_step"]))
            tok = harness.timing(r, args.warmup, [s["tokens"] for s in plan["per_step"]])
            r.pop("stamps"), r.pop("cpu_stamps")
            run = {
                "framework": framework,
                "repeat": rep,
                "steps_per_s": t["rate"],
                "steps_per_s_steps": t["step_rates"],
                "steps_per_cpu_s": t["rate_per_cpu_s"],
                "tokens_per_s": tok["rate"],
                "timed_s": t["timed_s"],
                "timed_cpu_s": t["timed_cpu_s"],
                "step_s": t["step_s"],
                **r,
            }
            runs.append(run)
            s = run["stats"]
            harness.log(
                f"{spec['name']}: {run['steps_per_s']:.3f} steps/s (median step {t['rate_step_median']:.3f}), peak RSS {run['max_rss_mib']:.0f} MiB, "
                f"losses {[round(x, 5) for x in s['loss']]}, other load {run['other_load_cores']} cores"
            )
    return {
        "name": name,
        "model": config["model"]["name_or_path"],
        "lora": config["model"]["lora"]["enabled"],
        "gradient_checkpointing": {
            "alignlab": config["model"]["gradient_checkpointing"],
            "trl": "full" if config["model"]["gradient_checkpointing"] == "full" else "none",
        },
        "batch_size_pairs": config["train"]["batch_size"],
        "max_length": config["data"]["max_length"],
        "max_prompt_length": config["data"]["max_prompt_length"],
        "beta": config["beta"],
        "lr": config["train"]["lr"],
        "pairs": plan["pairs"],
        "warmup_steps_excluded": args.warmup,
        "timed_steps": args.steps,
        "padded_widths": [s["padded_width"] for s in plan["per_step"]],
        "steps_per_s": harness.summarise(runs, "steps_per_s", peers=args.peers),
        "steps_per_s_step_median": harness.pooled_median(runs, "steps_per_s_steps", peers=args.peers),
        "steps_per_cpu_s": harness.summarise(runs, "steps_per_cpu_s", peers=args.peers),
        "peak_rss_mib": harness.summarise(runs, "max_rss_mib", peers=args.peers, lower_is_better=True),
        "agreement": agreement(runs, args.tol_loss, args.tol_logps),
        "targets": {"steps_per_s_ratio_min": 1.5, "peak_rss_ratio_max": 0.7},
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument(
        "--configs", default="tiny,smollm2-full,smollm2-full-gc", help=f"comma-separated, from {', '.join(CONFIGS)}"
    )
    p.add_argument("--peers", default=",".join(PEERS), help="TRL set-ups to run, from " + ", ".join(PEERS))
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps run first and left out of the timing (>= 1)")
    p.add_argument("--repeats", type=int, default=1, help="runs per framework, alternating")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads in every run (0: all cores; see README: why 1)"
    )
    p.add_argument("--batch-size", type=int, default=0, help="pairs per step (default: the profile's)")
    p.add_argument("--max-length", type=int, default=0, help="override max_length (max_prompt_length = half)")
    p.add_argument("--beta", type=float, default=0.0, help="override β (default: the profile's)")
    p.add_argument("--tol-loss", type=float, default=1e-4, help="agreement tolerance on losses (absolute)")
    p.add_argument("--tol-logps", type=float, default=1e-4, help="agreement tolerance on summed log-probs (relative)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--output", default="dpo_vs_trl", help="results/<output>.json")
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.warmup < 1:
        p.error("--warmup must be at least 1")
    import os

    args.threads = args.threads or os.cpu_count() or 1
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    bad = [x for x in args.peers if x not in PEERS] + [
        n for n in args.configs.split(",") if n.strip() and n.strip() not in CONFIGS
    ]
    if bad:
        p.error(f"unknown: {bad}")
    result = {**harness.result_header("dpo_vs_trl", args.threads), "configs": []}
    t0 = time.perf_counter()
    for name in [n.strip() for n in args.configs.split(",") if n.strip()]:
        harness.log(f"config {name}")
        result["configs"].append(measure(name, args))
    result["loadavg_end"] = harness.loadavg()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    path = harness.write_result(args.output, result)
    for c in result["configs"]:
        sp, mem = c["steps_per_s"], c["peak_rss_mib"]
        agreed = ", ".join(f"{k}={v['agree']}" for k, v in c["agreement"].items() if isinstance(v, dict))
        harness.log(
            f"{c['name']}: ours {sp['ours']:.3f} steps/s vs {sp['best_peer']} {sp['peer']:.3f} (x{sp['ratio']:.2f}, target >= 1.5); "
            f"peak RSS {mem['ours']:.0f} vs {mem['best_peer']} {mem['peer']:.0f} MiB (x{mem['ratio']:.2f}, target <= 0.7); "
            f"agreement: {agreed}"
        )
    harness.log(f"wrote {path} ({result['total_s']} s; load {result['loadavg_start']} -> {result['loadavg_end']})")


if __name__ == "__main__":
    main()
