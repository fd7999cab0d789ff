"""GPU check of the policy step's core: chunked log-probs vs full logits, bf16, SmolLM2-135M shape.

Runs on a CUDA machine (the project's lent GPU); on CPU it runs a small shape so the script is
checked anywhere. For each of (a) alignlab's ``token_logprobs`` (trunk once, then the LM head,
log-softmax and gather over chunks under activation checkpointing) and (b) the usual path
(``model(...).logits`` in full, then ``log_softmax`` in float32 and gather), it measures one
forward + backward + AdamW step: median time and peak GPU memory, and the relative error of the
log-probs against a float32 computation.

    python benchmarks/gpu_logprobs.py --out benchmarks/results/gpu_logprobs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from alignlab.models.logprobs import token_logprobs  # noqa: E402


def smollm2_shaped(device, dtype, small: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30 if not small else 2,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


def naive_logprobs(model, ids, attn):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (B, T-1, V), held in full
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def bench(fn, model, ids, attn, steps: int, device) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = -fn(model, ids, attn).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up kernels and allocations
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del opt
    return {"median_step_s": statistics.median(times), "peak_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/gpu_logprobs.json")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = device.type != "cuda"
    if small:
        args.batch, args.seq, args.steps = 2, 64, 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = smollm2_shaped(device, dtype, small)
    ids = torch.randint(0, 49152, (args.batch, args.seq), device=device)
    attn = torch.ones_like(ids)

    with torch.no_grad():  # accuracy against float32 on the same weights
        ref_model = smollm2_shaped(device, torch.float32, small)
        ref_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        want = naive_logprobs(ref_model, ids[:2], attn[:2])
        del ref_model
        ours = token_logprobs(model, ids[:2], attn[:2])
        theirs = naive_logprobs(model, ids[:2], attn[:2])
    rel = lambda a: float((a - want).norm() / want.norm())  # noqa: E731

    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "rel_error_vs_fp32": {"alignlab_chunked": rel(ours), "full_logits": rel(theirs)},
    }
    for name, fn in (
        ("alignlab_chunked", lambda m, i, a: token_logprobs(m, i, a)),
        ("full_logits", naive_logprobs),
        ("alignlab_chunked_again", lambda m, i, a: token_logprobs(m, i, a)),
    ):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            results[name] = bench(fn, model, ids, attn, args.steps, device)
        except torch.OutOfMemoryError:
            results[name] = {"error": "out of memory"}
    a, b = results["alignlab_chunked"], results["full_logits"]
    if "median_step_s" in a and "median_step_s" in b:
        results["ratio"] = {
            "step_time_ours_over_full": a["median_step_s"] / b["median_step_s"],
            "peak_memory_ours_over_full": a["peak_gib"] / b["peak_gib"],
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
