"""Rewrite the figures table in benchmarks/README.md from benchmarks/results/*.json.

    python benchmarks/report.py            # any Python 3.10+; reads only the JSON files

The table sits between the ``<!-- figures:start -->`` and ``<!-- figures:end -->`` markers; the
rest of the README is prose written by hand. Every number in the table comes from a results file,
so the table and the files cannot disagree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
DPO_COMMANDS = (  # results file, what changed
    ("dpo_command_vs_trl", ""),
    ("dpo_command_vs_trl_full", " (alignlab with full checkpointing)"),
    ("dpo_command_vs_trl_layout", " (pairs on the cheapest rows, no down-projection output kept)"),
    ("dpo_command_vs_trl_heap", " (AdamW's moments in one block, heap trimmed after each step)"),
    ("dpo_command_vs_trl_rows_1thread", " (tied embedding's gradient as rows, logsumexp in row blocks; Xeon)"),
    ("dpo_command_vs_trl_rows", " (tied embedding's gradient as rows, logsumexp in row blocks; Xeon)"),
    ("dpo_command_vs_trl_1thread_today", " (the same code, 2026-12-04's Xeon)"),
    ("dpo_command_vs_trl_1thread_epyc", " (2026-12-06's EPYC)"),
)


def _load(name: str) -> dict | None:
    p = BENCH / "results" / f"{name}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def _cpu(d: dict) -> str:
    """The machine's CPU in a few words (the EPYC and the AVX-512 Xeon read differently)."""
    cpu = d.get("machine", {}).get("cpu", "?")
    return "Xeon" if "Xeon" in cpu else "EPYC" if "EPYC" in cpu else cpu


def _load_note(d: dict, runs: list[dict] | None = None) -> str:
    """Load average at start → end, and the most CPU other jobs took during any one run."""
    a, b = d.get("loadavg_start"), d.get("loadavg_end")
    note = f"{a[0]:.2f} → {b[0]:.2f}" if a and b else ""
    others = [r.get("other_load_cores") for r in (runs or []) if r.get("other_load_cores") is not None]
    if others:
        note += f"; other jobs ≤ {max(others):.2f} cores"
    return note


def _num(x, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def _mem_row(what: str, mem: dict, peer: str, target: str, note: str, load: str, date: str) -> list:
    """One table row of a peak-memory comparison (``mem``: ours, peer, ratio in MiB)."""
    return [
        what + " · peak RSS (MiB)",
        _num(mem["ours"], ".0f"),
        f"{peer} {_num(mem['peer'], '.0f')}",
        _num(mem["ratio"], ".2f") + "×" + target,
        note,
        load,
        date[:10],
    ]


def _ckpt(config: dict) -> str:
    """Which activation checkpointing each side ran (results written before the switch had none)."""
    c = config.get("gradient_checkpointing", {"alignlab": "none", "trl": "none"})
    return f"; activation checkpointing: alignlab {c['alignlab']}, TRL {c['trl']}"


def _dpo_command_rows(cmd: dict | None, label: str) -> list[list[str]]:
    """Wall time and peak memory of one `dpo_command_vs_trl.py` results file."""
    out: list[list[str]] = []
    if not cmd:
        return out
    c = cmd["config"]
    w, mem = c["wall_s"], c["peak_rss_mib"]
    what = (
        f"DPO whole command (`alignlab dpo` vs a TRL {cmd['versions'].get('trl', '?')} script; HH-RLHF {c['pairs']} pairs, "
        f"{c['batch_size_pairs']}/step, {c['steps']} steps, len ≤{c['max_length']}, reference pass + checkpoint + final save; "
        f"{cmd['threads']} thread(s))"
    )
    load = _load_note(cmd, c["runs"])
    during = "; ".join(
        f"{r['framework']} RSS in steps {r['rss_during_steps_mib'].get('min', 0):.0f}–{r['rss_during_steps_mib'].get('max', 0):.0f}"
        for r in c["runs"]
    )
    out.append(
        [
            what + label + " · wall s",
            _num(w["ours"], ".0f"),
            f"{w['best_peer']} {_num(w['peer'], '.0f')}",
            _num(w["peer"] / w["ours"] if w["ours"] else None, ".2f") + "× faster (target ≥ 2)",
            ", ".join(f"{fw} {v:.0f} s" for fw, v in w["medians"].items() if fw != "alignlab"),
            load,
            cmd["date"][:10],
        ]
    )
    out.append(
        _mem_row(f"DPO whole command{label}", mem, mem["best_peer"], " (target ≤ 0.6)", during, load, cmd["date"])
    )
    return out


def rows() -> list[list[str]]:
    out = []
    for sft in filter(None, map(_load, ("sft_throughput", "sft_defaults", "sft_throughput_116", "sft_gap_probe"))):
        for c in sft["configs"]:
            tp, st, mem = c["tokens_per_s"], c["tokens_per_s_step_median"], c["peak_rss_mib"]
            peer = f"TRL {sft.get('versions', {}).get('trl', '?')}, {sft.get('threads', '?')} thread(s)"
            what = f"SFT {c['name']} (bs {c['batch_size']}, len ≤{c['max_length']}, {c['timed_steps']} timed steps × {len(tp['all'].get('alignlab', []))} runs each{_ckpt(c)}; {peer})"
            load = _load_note(sft, c["runs"])
            out.append(
                [
                    what + " · tokens/s",
                    _num(tp["ours"], ".0f"),
                    f"TRL {_num(tp['peer'], '.0f')}",
                    _num(tp["ratio"], ".2f") + "×",
                    f"median step: {_num(st['ratio'], '.2f')}×",
                    load,
                    sft["date"][:10],
                ]
            )
            out.append(_mem_row(f"SFT {c['name']}", mem, "TRL", "", "", load, sft["date"]))
    dpo_steps = ("dpo_vs_trl", "dpo_vs_trl_none", "dpo_vs_trl_116", "dpo_vs_trl_layout")
    # 2026-12-03 on the Xeon: the tied embedding's gradient as rows, logsumexp in row blocks
    dpo_steps += ("dpo_vs_trl_rows_1thread", "dpo_vs_trl_rows")
    dpo_steps += ("dpo_vs_trl_1thread_today",)  # 2026-12-04, the same code on that day's Xeon
    for dpo in filter(None, map(_load, dpo_steps)):
        for c in dpo["configs"]:
            sp, st, mem, ag = c["steps_per_s"], c["steps_per_s_step_median"], c["peak_rss_mib"], c["agreement"]
            agree = all(v["agree"] for v in ag.values() if isinstance(v, dict))
            peer = f"TRL {dpo.get('versions', {}).get('trl', '?')}, {dpo.get('threads', '?')} thread(s), {_cpu(dpo)}"
            what = f"DPO {c['name']} (full FT, {c['batch_size_pairs']} pairs/step, len ≤{c['max_length']}, β {c['beta']}{_ckpt(c)}; {peer})"
            load = _load_note(dpo, c["runs"])
            others = ", ".join(
                f"vs {fw} {_num(v, '.3f')}: {_num(sp['ours'] / v if v else None, '.2f')}×"
                for fw, v in sp["medians"].items()
                if fw not in ("alignlab", sp["best_peer"])
            )
            mem_others = ", ".join(
                f"vs {fw} {_num(v, '.0f')}: {_num(mem['ours'] / v if v else None, '.2f')}×"
                for fw, v in mem["medians"].items()
                if fw not in ("alignlab", mem["best_peer"])
            )
            out.append(
                [
                    what + " · steps/s",
                    _num(sp["ours"], ".3f"),
                    f"{sp['best_peer']} {_num(sp['peer'], '.3f')}",
                    _num(sp["ratio"], ".2f") + "× (target ≥ 3)",
                    f"{others}; median step: {_num(st['ratio'], '.2f')}×; losses agree: {'yes' if agree else 'NO'}",
                    load,
                    dpo["date"][:10],
                ]
            )
            out.append(
                _mem_row(f"DPO {c['name']}", mem, mem["best_peer"], " (target ≤ 0.5)", mem_others, load, dpo["date"])
            )
    # after the on-policy change, then with each prompt computed once per group
    for name in (
        "grpo_vs_trl",
        "grpo_vs_trl_onpolicy",
        "grpo_vs_trl_shared",
        "grpo_vs_trl_chunked",
        "grpo_vs_trl_streamed",
        "grpo_vs_trl_decode",
        "grpo_vs_trl_fp32sampling",  # 2026-12-04: the same hour, float32 then bfloat16 sampling
        "grpo_vs_trl_bf16sampling",
        "grpo_vs_trl_epyc_heap",  # 2026-12-06: the EPYC, sampling's freed memory kept, float32 sampling
    ):
        out += _grpo_rows(_load(name), name)
    for name, label in DPO_COMMANDS:
        out += _dpo_command_rows(_load(name), label)
    rm = _load("rm_hh_accuracy")
    if rm:
        d = rm["data"]
        lo, hi = _wilson(rm["heldout_accuracy"], d["heldout_pairs"])
        out.append(
            [
                f"Reward model, HH-RLHF harmless-base: held-out accuracy (SmolLM2-135M LoRA, train {d['train_pairs']} / held-out {d['heldout_pairs']} pairs, len ≤{rm['settings']['max_length']})",
                f"{_num(rm['heldout_accuracy'], '.3f')} (95% CI {lo:.3f}–{hi:.3f})",
                f"chance 0.500; longer-response rule {_num(d['baseline_longer_response_accuracy'], '.3f')}",
                "—",
                f"1 epoch = {rm['steps']} steps; {rm['run']['wall_s'] / 60:.1f} min in all; peak RSS {rm['run']['max_rss_mib']:.0f} MiB",
                _load_note(rm, [rm["run"]]),
                rm["date"][:10],
            ]
        )
    return out


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` measured on ``n`` trials."""
    if not n:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def table() -> str:
    head = [
        "benchmark",
        "ours (alignlab)",
        "best peer",
        "ratio ours/peer",
        "notes",
        "machine load (1-min load avg start → end; other jobs' CPU during a run)",
        "date",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows()]
    return "\n".join(lines)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    block = f"{START}\n{table()}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    README.write_text(text, encoding="utf-8")
    print(table())


_GRPO_TAG = {
    "onpolicy": " (on-policy)",
    "shared": " (shared prompts)",
    "chunked": " (backward in chunks)",
    "streamed": " (chunks, π_ref on disk)",
    "decode": " (own decoding loop, Xeon)",
}


def _grpo_rows(grpo: dict | None, name: str) -> list:
    """Table rows of one grpo_vs_trl*.json file."""
    out: list = []
    for a in grpo["algos"] if grpo else []:
        sp, mem, wall = a["steps_per_s"], a["peak_rss_mib"], a["wall_s"]
        peer = f"TRL {grpo['versions'].get('trl', '?')}, {grpo['threads']} thread(s)"
        what = (
            f"{a['algo'].upper()} whole command (SmolLM2-135M full FT, {a['prompts_per_step']} prompts × {a['group_size']} "
            f"× ≤{a['max_new_tokens']} new tokens, β {a['beta']}, {a['steps']} steps{_ckpt(a)}; {peer})"
            + {
                "onpolicy": " after the on-policy change",
                "shared": " with each prompt computed once per group",
                "chunked": " with the on-policy backward in chunks of 8 rows",
                "streamed": " with the backward in chunks and π_ref's weights on disk (the defaults)",
                "decode": " with alignlab's own decoding loop (Xeon)",
                "fp32sampling": " sampling in float32 (Xeon, 2026-12-04)",
                "bf16sampling": " sampling in bfloat16: rollout.sampling_dtype=bfloat16 (Xeon, 2026-12-04)",
                "heap": " sampling in float32 in row blocks with its freed memory kept (EPYC, 2026-12-06)",
            }.get(name.rsplit("_", 1)[-1], "")
        )
        load = _load_note(grpo, a["runs"])
        parts = "; ".join(
            f"{r['framework']} step {r['step_s_median']:.1f} s = gen {r['median_after_first']['generation']:.1f} + "
            f"score {r['median_after_first']['scoring']:.2f} + logprobs {r['median_after_first']['logprobs']:.1f} + "
            f"train {r['median_after_first']['training']:.1f}"
            for r in a["runs"]
        )
        out.append(
            [
                what + " · steps/s (steps 2..N)",
                _num(sp["ours"], ".3f"),
                f"{sp['best_peer']} {_num(sp['peer'], '.3f')}",
                _num(sp["ratio"], ".2f") + "× (target ≥ 2)",
                parts,
                load,
                grpo["date"][:10],
            ]
        )
        walls = "wall s: " + ", ".join(f"{fw} {v:.0f}" for fw, v in wall["medians"].items())
        what = f"{a['algo'].upper()} whole command{_GRPO_TAG.get(name.rsplit('_', 1)[-1], '')}"
        out.append(_mem_row(what, mem, mem["best_peer"], " (target ≤ 0.6)", walls, load, grpo["date"]))
    return out


if __name__ == "__main__":
    main()
