"""GRPO and RLOO on CPU, the whole command: ``alignlab grpo`` / ``alignlab rloo`` against TRL's GRPOTrainer / RLOOTrainer.

    benchmarks/.envs/trl/bin/python benchmarks/grpo_vs_trl.py                       # grpo and rloo, 5 steps each
    benchmarks/.envs/trl/bin/python benchmarks/grpo_vs_trl.py --algos grpo --steps 3

SmolLM2-135M-Instruct, full fine-tuning, float32 on the CPU. Each step is one rollout of
``--prompts`` prompts × ``--group-size`` responses of at most ``--max-new-tokens`` tokens, then
one optimizer step on all of it (one minibatch, one epoch). The reward is the same pure-Python
rule on both sides: alignlab's built-in ``char_fraction`` (share of the response's characters that
are lowercase letters), which TRL gets as its reward function. β: 0.04 for GRPO (both), 0.05 for
RLOO (TRL's default, and alignlab's). Both take the same prompts in the same order (alignlab's
data order over ``demo:prompts``; TRL reads them unshuffled), lr 1e-6 (TRL's default) without
warm-up, AdamW, clipping at 1.0. GRPO's loss on both sides is the per-sequence mean
(TRL ``loss_type="grpo"``).

alignlab runs as its user would: the ``alignlab`` command (``alignlab.cli.main``) with
``--profile default`` and key=value settings, the run folder written (metrics, rollouts, the
end-of-run checkpoint and final model). TRL runs a plain script: the trainer with its defaults
for everything not listed above (e.g. its default full activation checkpointing, ``trl``), then
``trainer.save_model()``; ``trl-nockpt`` is the same without activation checkpointing. alignlab's
checkpointing is its default (``auto``: selective for full fine-tuning).

Per step: generation, scoring, the no-grad log-prob pass (π_ref, and π_old where computed) and
training, from alignlab's ``metrics.jsonl`` (``time/*``) and, for TRL, from timers wrapped around
its ``_generate``, ``_calculate_rewards`` and the ``_get_per_token_logps_and_entropies`` calls
made while it builds a rollout (training = the rest of the step). Step time: an optimizer
post-step hook in both processes. steps/s over the steps after the first; peak RSS: the whole
process (``wait4``); ``wall_s``: the whole command. Writes ``benchmarks/results/grpo_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import harness

SCRIPT = Path(__file__).resolve()
PARTS = ("generation", "scoring", "logprobs", "training")
PEERS = ["trl", "trl-nockpt"]
LOWERCASE = "abcdefghijklmnopqrstuvwxyz"
BETA = {"grpo": 0.04, "rloo": 0.05}


def overrides(algo: str, args, output_dir: str) -> list[str]:
    """The key=value settings of the alignlab command (on top of ``--profile default``)."""
    rows = args.prompts * args.group_size
    return [
        "model.name_or_path=smollm2-135m",
        "model.lora.enabled=false",
        "model.dtype=float32",
        "model.device=cpu",
        f"train.output_dir={output_dir}",
        "train.run_name=bench",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.prompts}",
        "train.lr=1e-6",
        "train.warmup_steps=0",
        "train.num_samples=0",
        "train.progress=false",
        f"train.seed={args.seed}",
        "data.eval_fraction=0",
        f"group_size={args.group_size}",
        f"mini_batch_size={rows}",
        "ppo_epochs=1",
        f"beta={BETA[algo]}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "rollout.engine=transformers",
        "reward.source=char_fraction",
        f"reward.kwargs=[chars={LOWERCASE}]",
        *args.set,
    ]


def stage_config(algo: str, args) -> dict:
    from alignlab.config import GRPOConfig, RLOOConfig, load_config, to_dict
    from alignlab.models.checkpointing import resolve_mode
    from alignlab.profiles import load_profile

    cls = {"grpo": GRPOConfig, "rloo": RLOOConfig}[algo]
    cfg = load_config(cls, None, overrides(algo, args, "runs"), base=load_profile("default").get(algo, {}) or {})
    cfg.model.gradient_checkpointing = resolve_mode(cfg.model)
    return to_dict(cfg)


def plan_prompts(config: dict, algo: str) -> list[list[dict]]:
    """The prompts of every step in alignlab's order (its split and data order), as chat messages."""
    import logging

    from alignlab.config import GRPOConfig, RLOOConfig, from_dict
    from alignlab.data.tokenize import messages_of
    from alignlab.trainers.common import load_split
    from alignlab.trainers.loop import DataOrder

    cfg = from_dict({"grpo": GRPOConfig, "rloo": RLOOConfig}[algo], config)
    records, _ = load_split(cfg.data, "prompt", cfg.train.seed, logging.getLogger("bench"))
    order = DataOrder(len(records), cfg.train.batch_size, cfg.train.seed)
    return [[messages_of(records[i].prompt) for i in order.batch(k)] for k in range(cfg.train.max_steps)]


# ----------------------------------------------------------------------------- workers
def worker_alignlab(spec: dict) -> dict:
    out = harness.cli_worker(spec)
    metrics = Path(spec["argv_output_dir"]) / "bench" / spec["algo"] / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    out["parts"] = {p: [r[f"time/{p}"] for r in rows] for p in PARTS}
    out["score"] = [r.get("score") for r in rows]
    out["response_length"] = [r.get("response_length") for r in rows]
    return out


class PartTimers:
    """Seconds spent per step in methods of a TRL trainer, keyed by part; reset after each optimizer step."""

    def __init__(self, trainer):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.current = dict.fromkeys(("generation", "scoring", "logprobs"), 0.0)
        self.steps: list[dict] = []
        self._in_rollout = False
        self._wrap(trainer, "_generate", "generation")
        self._wrap(trainer, "_calculate_rewards", "scoring")
        self._wrap(trainer, "_get_per_token_logps_and_entropies", "logprobs", only_in_rollout=True)
        rollout = trainer._generate_and_score_completions

        def in_rollout(*a, **k):
            self._in_rollout = True
            try:
                return rollout(*a, **k)
            finally:
                self._in_rollout = False

        trainer._generate_and_score_completions = in_rollout
        self._handle = register_optimizer_step_post_hook(self._close_step)

    def _wrap(self, obj, name: str, part: str, only_in_rollout: bool = False) -> None:
        fn = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if self._in_rollout or not only_in_rollout:
                    self.current[part] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def _close_step(self, *_):
        self.steps.append(self.current)
        self.current = dict.fromkeys(self.current, 0.0)

    def close(self) -> None:
        self._handle.remove()


def worker_trl(spec: dict) -> dict:
    start = time.perf_counter()
    import datasets
    import trl

    from alignlab.config import GRPOConfig, RLOOConfig, from_dict
    from alignlab.gold import char_fraction
    from alignlab.models.load import load_model

    algo = spec["algo"]
    cfg = from_dict({"grpo": GRPOConfig, "rloo": RLOOConfig}[algo], spec["config"])
    cfg.model.gradient_checkpointing = "none"  # TRL's own switch decides
    model, tokenizer = (lambda m: (m.model, m.tokenizer))(load_model(cfg.model, seed=cfg.train.seed))

    def lowercase_share(completions, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return char_fraction([""] * len(texts), texts, chars=LOWERCASE)

    rows = cfg.train.batch_size * cfg.group_size
    args = harness.trl_training_args(cfg, spec["workdir"], gradient_checkpointing=spec["framework"] == "trl")
    args.pop("train_sampling_strategy")  # GRPO/RLOO sample through their own RepeatSampler (shuffle_dataset=False)
    args.update(
        per_device_train_batch_size=rows,  # completions per step: one minibatch
        num_generations=cfg.group_size,
        max_completion_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        beta=cfg.hyperparameters()["beta"] if algo == "grpo" else cfg.beta,
        num_iterations=1,
        shuffle_dataset=False,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    if algo == "grpo":
        args["loss_type"] = "grpo"
        config, trainer_cls = trl.GRPOConfig(**args), trl.GRPOTrainer
    else:
        config, trainer_cls = trl.RLOOConfig(**args), trl.RLOOTrainer
    dataset = datasets.Dataset.from_list([{"prompt": p} for step in spec["prompts"] for p in step])
    trainer = trainer_cls(
        model=model, reward_funcs=lowercase_share, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    parts = PartTimers(trainer)
    clock = harness.StepClock()
    trainer.train()
    clock.close()
    parts.close()
    trainer.save_model(str(Path(spec["workdir"]) / "final"))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    out = {**clock.as_dict(), "start": start, "end": time.perf_counter()}
    out["parts"] = {p: [s[p] for s in parts.steps] for p in ("generation", "scoring", "logprobs")}
    out["score"] = [h.get("reward") for h in logs]
    out["response_length"] = [h.get("completions/mean_length") for h in logs]
    out["trl_beta"] = config.beta
    return out


def worker_main(path: str) -> None:
    spec = harness.read_spec(path)
    fn = worker_alignlab if spec["framework"] == "alignlab" else worker_trl
    harness.write_report(spec, fn(spec))


# ----------------------------------------------------------------------------- the benchmark
def per_step(r: dict) -> dict:
    """Each step's seconds (from the optimizer stamps; step 1 from the trainer's start) and its parts."""
    stamps = r["stamps"]
    step_s = [b - a for a, b in zip(stamps, stamps[1:])]
    parts = {p: list(v) for p, v in r["parts"].items()}
    if "training" not in parts:  # TRL: the rest of each step (forward with grad, backward, optimizer, bookkeeping)
        n = len(stamps)
        parts["training"] = [None] + [
            step_s[k - 1] - sum(parts[p][k] for p in ("generation", "scoring", "logprobs")) for k in range(1, n)
        ]
    return {"step_s": [None, *step_s], **{p: parts[p] for p in PARTS}}


def measure(algo: str, args) -> dict:
    config = stage_config(algo, args)
    prompts = plan_prompts(config, algo)
    runs = []
    for rep in range(args.repeats):
        for framework in ["alignlab", *args.peers]:
            name = f"{algo}/{framework}/{rep}"
            with tempfile.TemporaryDirectory(prefix="alignlab-bench-grpo-") as out_dir:
                spec = {"name": name, "framework": framework, "algo": algo}
                if framework == "alignlab":
                    argv = [algo, "--profile", "default", *overrides(algo, args, out_dir)]
                    spec.update(argv=argv, argv_output_dir=out_dir)
                else:
                    spec.update(config=config, prompts=prompts)
                r = harness.run_worker(SCRIPT, spec, threads=args.threads, timeout=args.timeout)
            steps = per_step(r)
            timed = steps["step_s"][1:]
            run = {
                "framework": framework,
                "repeat": rep,
                "steps_per_s": len(timed) / sum(timed),
                "step_s_median": statistics.median(timed),
                "last_step": {k: v[-1] for k, v in steps.items()},
                "median_after_first": {k: statistics.median(v[1:]) for k, v in steps.items()},
                "steps": steps,
                "score": r["score"],
                "response_length": r["response_length"],
                "first_step_done_s": r["stamps"][0] - r["start"],  # imports, load, set-up and step 1
                **{
                    k: v for k, v in r.items() if k not in ("stamps", "cpu_stamps", "parts", "score", "response_length")
                },
            }
            if "argv" in spec:
                run["command"] = "alignlab " + " ".join(spec["argv"]).replace(out_dir, "<tmp>")
            runs.append(run)
            m = run["median_after_first"]
            harness.log(
                f"{name}: {run['steps_per_s']:.3f} steps/s, step {run['step_s_median']:.1f} s "
                f"(gen {m['generation']:.1f}, score {m['scoring']:.2f}, logprobs {m['logprobs']:.1f}, train {m['training']:.1f}), "
                f"peak RSS {run['max_rss_mib']:.0f} MiB, wall {run['wall_s']:.0f} s, other load {run['other_load_cores']} cores"
            )
    return {
        "algo": algo,
        "model": "smollm2-135m (SmolLM2-135M-Instruct), full fine-tuning, float32",
        "prompts_per_step": args.prompts,
        "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens,
        "steps": args.steps,
        "beta": BETA[algo],
        "reward": f"char_fraction(chars={LOWERCASE}) on the response text",
        "gradient_checkpointing": {
            "alignlab": config["model"]["gradient_checkpointing"],
            "trl": "full",
            "trl-nockpt": "none",
        },
        "steps_per_s": harness.summarise(runs, "steps_per_s", peers=args.peers),
        "peak_rss_mib": harness.summarise(runs, "max_rss_mib", peers=args.peers, lower_is_better=True),
        "wall_s": harness.summarise(runs, "wall_s", peers=args.peers, lower_is_better=True),
        "targets": {"steps_per_s_ratio_min": 2.0, "peak_rss_ratio_max": 0.6},
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    harness.add_run_args(p, output="grpo_vs_trl", peers=PEERS)
    p.add_argument("--algos", default="grpo,rloo", help="comma-separated: grpo, rloo")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps (rollouts) per run; the first is not timed")
    p.add_argument("--prompts", type=int, default=8, help="prompts per rollout")
    p.add_argument("--group-size", type=int, default=4, help="responses sampled per prompt")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated at most per response")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one more alignlab setting (repeatable)"
    )
    args = p.parse_args()
    if args.worker:
        return worker_main(args.worker)
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step is not timed)")
    import os

    args.threads = args.threads or os.cpu_count() or 1
    args.peers = [x.strip() for x in args.peers.split(",") if x.strip()]
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    bad = [x for x in args.peers if x not in PEERS] + [a for a in algos if a not in BETA]
    if bad:
        p.error(f"unknown: {bad}")
    result = {**harness.result_header("grpo_vs_trl", args.threads), "algos": []}
    t0 = time.perf_counter()
    for algo in algos:
        harness.log(f"{algo}")
        result["algos"].append(measure(algo, args))
    result["loadavg_end"] = harness.loadavg()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    path = harness.write_result(args.output, result)
    for a in result["algos"]:
        sp, mem = a["steps_per_s"], a["peak_rss_mib"]
        harness.log(
            f"{a['algo']}: ours {sp['ours']:.3f} steps/s vs {sp['best_peer']} {sp['peer']:.3f} (x{sp['ratio']:.2f}, target >= 2); "
            f"peak RSS {mem['ours']:.0f} vs {mem['best_peer']} {mem['peer']:.0f} MiB (x{mem['ratio']:.2f}, target <= 0.6)"
        )
    harness.log(f"wrote {path} ({result['total_s']} s; load {result['loadavg_start']} -> {result['loadavg_end']})")


if __name__ == "__main__":
    main()
