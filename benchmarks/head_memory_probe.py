"""Where SFT's memory and time go: one SmolLM2 LoRA step on the SFT benchmark's first batch, five ways.

    benchmarks/.envs/trl/bin/python benchmarks/head_memory_probe.py

A diagnosis aid for ``sft_throughput.py`` (not a comparison with a peer). Each variant runs one
forward + backward in a fresh process (peak RSS measured as in the other benchmarks) and reports
the peak above the loaded model and the step's seconds:

* ``alignlab``        ``models.logprobs.token_logprobs`` as ``train_sft`` calls it (LM head over all
                      positions, chunks of 128 positions, recomputed in backward) + ``sft_loss``;
* ``alignlab_chunk32`` the same with 32-position chunks;
* ``hf_labels``       ``model(input_ids, attention_mask, labels=...)``: full (B, T, V) logits;
* ``response_head``   trunk, then the LM head on response positions only, then cross-entropy
                      (what TRL's default ``chunked_nll`` SFT loss does, unchunked here);
* ``trunk_only``      trunk and a dummy loss on the hidden states: the floor without any head.

Writes ``benchmarks/results/head_memory_probe.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import harness

SCRIPT = Path(__file__).resolve()
VARIANTS = ["alignlab", "alignlab_chunk32", "hf_labels", "response_head", "trunk_only"]


def worker(spec: dict) -> dict:
    import torch

    from alignlab.config import SFTConfig, from_dict
    from alignlab.data.collate import pad_examples
    from alignlab.data.tokenize import Example
    from alignlab.losses.sft import sft_loss
    from alignlab.models.load import load_model
    from alignlab.models.logprobs import hidden_states, token_logprobs, trunk_and_head

    rows = spec["rows"]
    examples = [
        Example(
            [t for t, m in zip(r["input_ids"], r["completion_mask"]) if not m],
            [t for t, m in zip(r["input_ids"], r["completion_mask"]) if m],
        )
        for r in rows
    ]
    cfg = from_dict(SFTConfig, spec["config"])
    model = load_model(cfg.model, seed=cfg.train.seed).model
    model.train()
    b = pad_examples(examples, 0)
    ids, att, labels, mask = b["input_ids"], b["attention_mask"], b["labels"], b["loss_mask"]
    with torch.no_grad():  # touch the weights once so the baseline counts them
        model(input_ids=ids[:1, :8])
    base = _rss()
    v = spec["variant"]
    t0 = time.perf_counter()
    if v.startswith("alignlab"):
        lp = token_logprobs(model, ids, att, chunk_size=32 if v.endswith("chunk32") else 128)  # (B, T-1)
        loss, _ = sft_loss(lp, mask)
    elif v == "hf_labels":
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
    elif v == "response_head":
        _, head = trunk_and_head(model)
        h = hidden_states(model, ids, att)[:, :-1]  # (B, T-1, H)
        logits = head(h[mask])  # (N, V): response positions only
        loss = torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][mask])
    else:
        h = hidden_states(model, ids, att)
        loss = h.float().pow(2).mean()
    loss.backward()
    dt = time.perf_counter() - t0
    return {
        "loss": float(loss),
        "rss_loaded_mib": base,
        "step_s": dt,
        "shape": list(ids.shape),
        "response_tokens": int(mask.sum()),
    }


def _rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default="head_memory_probe")
    args = p.parse_args()
    if args.worker:
        spec = harness.read_spec(args.worker)
        return harness.write_report(spec, worker(spec))
    import sft_throughput as sft

    a = types.SimpleNamespace(warmup=1, steps=1, seed=0, batch_size=0, max_length=0, tiny_steps=0)
    config = sft.build_config("smollm2-lora", a)
    plan = sft.make_plan(config)
    rows = plan["rows"][: config["train"]["batch_size"]]
    out = {
        "benchmark": "head_memory_probe",
        "date": harness.now(),
        "machine": harness.machine(),
        "threads": args.threads,
        "config": "smollm2-lora, first batch",
        "variants": {},
    }
    for v in VARIANTS:
        r = harness.run_worker(
            SCRIPT,
            {"name": v, "framework": v, "variant": v, "config": config, "rows": rows},
            threads=args.threads,
            timeout=600,
        )
        r["peak_above_loaded_mib"] = round(r["max_rss_mib"] - r["rss_loaded_mib"])
        out["variants"][v] = r
        harness.log(
            f"{v}: peak {r['max_rss_mib']:.0f} MiB ({r['peak_above_loaded_mib']} above the loaded model), step {r['step_s']:.2f} s, loss {r['loss']:.5f}, other load {r['other_load_cores']}"
        )
    print(harness.write_result(args.output, out), file=sys.stderr)


if __name__ == "__main__":
    main()
