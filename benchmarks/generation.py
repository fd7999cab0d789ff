"""Generation for the RL stages on CPU, against the machine's compute limit (issue #15).

    .venv/bin/python benchmarks/generation.py                          # batches 8, 32, 64; 48 new tokens
    .venv/bin/python benchmarks/generation.py --batch-sizes 8 --engines alignlab

For each batch size the same left-padded prompts (``demo:prompts`` through the chat template, as
the RL stages tokenise them, repeated to fill the batch) are sampled at temperature 1 with a fixed
seed by

* ``alignlab``: :class:`alignlab.rollout.generate.TransformersEngine` on the policy as the PPO stage
  holds it (``--lora``: LoRA adapters on, B drawn at random so that folding them in is real work);
* ``alignlab-bfloat16`` (``--sampling-dtypes model bfloat16``): the same engine sampling from a
  bfloat16 copy of the policy (``rollout.sampling_dtype=bfloat16``; :mod:`alignlab.rollout.precision`);
* ``transformers``: plain ``model.generate`` on the base model, same prompts, same sampling
  settings (``do_sample``, ``top_k=0``, ``top_p=1``) and seed.

Figures per run: tokens/s (response tokens, EOS included, as the RL stages' ``gen_tokens_per_s``
counts them, over the wall time of the call), positions/s (batch × decoding steps: finished rows
keep being computed until the last one ends), prefill time (the first forward pass), per-step
decode latency (the rest of the call over the remaining steps) and the fraction of the compute
limit (:mod:`alignlab.rollout.throughput`: the machine's fp32 ``torch.mm`` rate, measured here,
over 2·N FLOPs per token, N = non-embedding parameters plus the LM head, LoRA weights excluded).
The engines draw different random numbers (alignlab inverts the CDF with one uniform per row,
``torch.multinomial`` draws one exponential per vocabulary entry), so sampled tokens differ;
``--check-tokens`` decodes the base model greedily with both and records whether the tokens are
equal. ``decode_limit_fraction`` is a decoding step's rows over its time against the limit: the
call's figure without the prefill, whose prompt tokens cost compute but are not sampled tokens.

Results go to ``benchmarks/results/generation.json`` (``--output``), keyed by ``--label``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from harness import loadavg, machine, now, versions  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="alignlab model name (preset, folder or cached hub id)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64], help="prompts per generate call")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens sampled at most per response")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-prompt-length", type=int, default=128, help="prompt tokens kept (the RL stages' default)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per batch size and engine (median kept)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--engines", nargs="+", default=["alignlab", "transformers"], choices=["alignlab", "transformers"])
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=True, help="alignlab samples a LoRA policy")
    p.add_argument(
        "--check-tokens",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also decode the base model greedily with both engines and compare their tokens",
    )
    p.add_argument(
        "--packed",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="alignlab's engine runs its linear layers on oneDNN-packed weights (rollout.packing)",
    )
    p.add_argument(
        "--sampling-dtypes",
        nargs="+",
        default=["model"],
        help="alignlab's engine samples in each of these (rollout.sampling_dtype: model, bfloat16, float16)",
    )
    p.add_argument("--label", default="current", help="name of this set of runs in the results file")
    p.add_argument("--output", default=str(BENCH / "results" / "generation.json"))
    return p.parse_args(argv)


def prompts_for(tokenizer, n: int, max_prompt_length: int) -> list[list[int]]:
    from alignlab.data import load_records
    from alignlab.rollout.sampling import tokenize_prompts

    records = load_records("demo:prompts", "prompt").records
    ids = tokenize_prompts(records, tokenizer, max_prompt_length)
    return [ids[i % len(ids)] for i in range(n)]


class ForwardClock:
    """Stamps the start and end of every forward pass of ``module`` (one per decoding step)."""

    def __init__(self, module):
        self.starts: list[float] = []
        self.ends: list[float] = []
        self._handles = [
            module.register_forward_pre_hook(lambda m, a: self.starts.append(time.perf_counter())),
            module.register_forward_hook(lambda m, a, o: self.ends.append(time.perf_counter())),
        ]

    def clear(self):
        self.starts.clear()
        self.ends.clear()

    def remove(self):
        for h in self._handles:
            h.remove()


def timed_call(fn, clock: ForwardClock, batch: int) -> dict:
    clock.clear()
    t0 = time.perf_counter()
    tokens, ids = fn()
    wall = time.perf_counter() - t0
    steps = len(clock.starts)
    prefill = clock.ends[0] - t0
    return {
        "wall_s": wall,
        "tokens": tokens,
        "steps": steps,
        "tokens_per_s": tokens / wall,
        "positions_per_s": batch * steps / wall,
        "prefill_s": prefill,
        "decode_step_ms": 1e3 * (wall - prefill) / max(steps - 1, 1),
        "ids": ids,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from alignlab.config import ModelConfig, from_dict
    from alignlab.data.collate import left_pad
    from alignlab.models.load import load_model
    from alignlab.models.logprobs import trunk_and_head
    from alignlab.rollout import throughput
    from alignlab.rollout.generate import SamplingParams, TransformersEngine
    from alignlab.rollout.precision import sampling_dtype

    print(f"alignlab from {sys.modules['alignlab'].__file__}", flush=True)
    gflops = throughput.matmul_gflops("cpu", 2048, 10)
    print(f"fp32 torch.mm 2048: {gflops:.1f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)
    model_cfg = {"name_or_path": args.model, "dtype": "float32", "device": "cpu"}
    base = load_model(from_dict(ModelConfig, model_cfg), seed=0, for_training=False)
    tok = base.tokenizer
    policy = None
    if args.lora:
        policy = load_model(from_dict(ModelConfig, {**model_cfg, "lora": {"enabled": True}}), seed=0).model
        with torch.no_grad():  # a trained-looking adapter: B starts at 0, which would make folding free
            gen = torch.Generator().manual_seed(0)
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
    sampler = policy if policy is not None else base.model
    n_flops = throughput.flops_per_token(base.model)
    limit = throughput.compute_limit_tokens_per_s(base.model, gflops)
    print(f"2N = {n_flops / 1e6:.1f} MFLOP per token -> compute limit {limit:.0f} tokens/s", flush=True)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos

    def alignlab_fn(model, prompts, temperature=args.temperature, dtype="model"):
        engine = TransformersEngine(
            model, tok, batch_size=len(prompts), packed=args.packed, dtype=sampling_dtype(dtype)
        )
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=temperature, seed=args.seed)

        def fn():
            gens = engine.generate(prompts, params)
            return sum(len(g.response_ids) for g in gens), [g.response_ids for g in gens]

        return fn

    def transformers_fn(model, prompts, temperature=args.temperature):
        ids, attn = left_pad(prompts, pad)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else {}

        def fn():
            torch.manual_seed(args.seed)
            with torch.no_grad():
                seqs = model.generate(
                    input_ids=ids,
                    attention_mask=attn,
                    **(sampling or {"do_sample": False}),
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=pad,
                )
            out = []
            for row in seqs[:, ids.shape[1] :].tolist():
                out.append(row[: row.index(eos) + 1] if eos in row else row)
            return sum(len(r) for r in out), out

        return fn

    base.model.eval()
    runs = []
    load0 = loadavg()
    for batch in args.batch_sizes:
        prompts = prompts_for(tok, batch, args.max_prompt_length)
        todo = []
        if "alignlab" in args.engines:
            for dtype in args.sampling_dtypes:
                name = "alignlab" if dtype == "model" else f"alignlab-{dtype}"
                todo.append((name, sampler, alignlab_fn(sampler, prompts, dtype=dtype)))
        if "transformers" in args.engines:
            todo.append(("transformers", base.model, transformers_fn(base.model, prompts)))
        for name, model, fn in todo:
            clock = ForwardClock(trunk_and_head(model)[0])  # both engines run the trunk once a step
            warm = SamplingParams(max_new_tokens=2, temperature=args.temperature, seed=args.seed)
            TransformersEngine(model, tok, batch_size=batch).generate(prompts, warm)
            results = [timed_call(fn, clock, batch) for _ in range(args.repeats)]
            clock.remove()
            med = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "ids"}
            med["limit_fraction"] = med["tokens_per_s"] / limit
            med["decode_limit_fraction"] = batch / (med["decode_step_ms"] / 1e3) / limit  # a step's rows alone
            row = {"engine": name, "batch": batch, **{k: round(v, 4) for k, v in med.items()}}
            runs.append(row)
            print(
                f"batch {batch:3d} {name:17s} {med['tokens_per_s']:7.1f} tok/s  {med['positions_per_s']:7.1f} pos/s  "
                f"prefill {med['prefill_s'] * 1e3:6.0f} ms  step {med['decode_step_ms']:6.1f} ms  "
                f"{100 * med['limit_fraction']:5.1f}% of limit (a decoding step: {100 * med['decode_limit_fraction']:4.1f}%)",
                flush=True,
            )
        if args.check_tokens:
            same = alignlab_fn(base.model, prompts, 0.0)()[1] == transformers_fn(base.model, prompts, 0.0)()[1]
            runs.append({"engine": "check", "batch": batch, "alignlab_tokens_equal_transformers": same})
            print(f"batch {batch:3d} greedy: alignlab's tokens equal transformers': {same}", flush=True)
    result = {
        "date": now(),
        "machine": machine(),
        "versions": versions(sys.executable),
        "threads": torch.get_num_threads(),
        "loadavg": [load0, loadavg()],
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "label")},
        "matmul_gflops_fp32": round(gflops, 1),
        "flops_per_token": n_flops,
        "flops_convention": "2N per token, N = parameters less the input embedding, LM head counted (tied), LoRA excluded; attention not counted",
        "compute_limit_tokens_per_s": round(limit, 1),
        "runs": runs,
    }
    out = Path(args.output)
    data = json.loads(out.read_text()) if out.is_file() else {}
    data[args.label] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out} [{args.label}]")


if __name__ == "__main__":
    main()
