"""The run report: ``<run>/report/report.html`` (one self-contained file) and ``summary.json``.

It reads the run folder only, through :mod:`alignlab.runs` (run.json, each stage's COMPLETE,
metrics.jsonl and samples.jsonl, ``eval/eval.json``), never a trainer or a model. :func:`collect`
gathers those files' numbers into one dict, written as ``summary.json``; the HTML and its figures
are drawn from that dict alone, so every number in the report is one of a file's numbers.

The HTML has no external resource: CSS inline, figures as base64 PNG ``data:`` URIs, no script.
All text that came from files (model responses, prompts, names, messages) is HTML-escaped.
A missing piece (no eval, no samples, no matplotlib, an interrupted stage) drops its section.

summary.json::

    {"schema": 1, "run": name, "manifest": run.json | null,
     "stages": [{"name", "state", "complete": COMPLETE's JSON | null, "cost": {key: value},
                 "metrics": {"<split>": {"<metric>": {"steps": [...], "values": [...], "last": v}}},
                 "n_samples": int}],
     "eval": eval.json | null,
     "samples": [{"prompt": text, "responses": {"<policy>": text}}],
     "rounds": null, or (iterated runs) one row per round r: {"round", "labels": label@r's new labels,
               "rm_labels": the labels reward@r trained on (every round's so far), "rm_heldout_accuracy",
               "rm_eval_pairs", "rm_gold_agreement": eval.json reward_models, "gold/<ppo|dpo>",
               "gain/<ppo|dpo>", "kl/<ppo|dpo>": eval.json's mean gold, gain and k3 KL of ppo@r / dpo@r}}

Non-finite metric values (NaN, inf) become null.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from alignlab import runs
from alignlab.eval.evaluate import EVAL_STAGE, read_eval

REPORT_DIR = "report"
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
SUMMARY_SCHEMA = 1
MAX_SAMPLE_PROMPTS = 8

# COMPLETE summary keys shown as a stage's cost (a nested "cost" object is shown whole).
COST_WORDS = ("wall", "elapsed", "seconds", "time_s", "tokens", "memory", "peak_mem")


# ----------------------------------------------------------------------------- collect
def _clean(v):
    return v if not (isinstance(v, float) and not math.isfinite(v)) else None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _metric_series(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """``{split: {metric: {steps, values, last}}}`` from metrics.jsonl rows, in file order."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        split = str(r.get("split", "train"))
        for k, v in r.items():
            if k in ("step", "split") or not _is_number(v):
                continue
            s = out.setdefault(split, {}).setdefault(k, {"steps": [], "values": []})
            s["steps"].append(r.get("step"))
            s["values"].append(_clean(float(v)))
    for split in out.values():
        for s in split.values():
            s["last"] = next((v for v in reversed(s["values"]) if v is not None), None)
    return out


def _cost(complete: dict | None) -> dict:
    if not complete:
        return {}
    if isinstance(complete.get("cost"), dict):
        return dict(complete["cost"])
    return {k: v for k, v in complete.items() if _is_number(v) and any(w in k for w in COST_WORDS)}


def prompt_text(prompt) -> str:
    """A prompt value (text or a list of {role, content}) as display text."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in prompt
        )
    return json.dumps(prompt, ensure_ascii=False)


def _side_by_side(run: Path, stages: list[str]) -> list[dict]:
    """Prompts answered by the most policies, each with one response per policy."""
    by_policy: dict[str, dict[str, str]] = {}
    eval_rows = runs.StageFolder(run / EVAL_STAGE).read_samples()
    if any("policy" in r for r in eval_rows):
        for r in eval_rows:
            by_policy.setdefault(str(r.get("policy")), {}).setdefault(
                prompt_text(r.get("prompt")), str(r.get("response", ""))
            )
    else:
        for stage in stages:
            for r in runs.StageFolder(run / stage).read_samples():
                by_policy.setdefault(stage, {}).setdefault(prompt_text(r.get("prompt")), str(r.get("response", "")))
    if not by_policy:
        return []
    order: list[str] = []
    for answers in by_policy.values():
        order.extend(p for p in answers if p not in order)
    order.sort(key=lambda p: -sum(p in a for a in by_policy.values()))  # stable: file order among equals
    return [
        {"prompt": p, "responses": {name: a[p] for name, a in by_policy.items() if p in a}}
        for p in order[:MAX_SAMPLE_PROMPTS]
    ]


def collect(run_path: str | Path) -> dict:
    """The report's data (summary.json), read from the run folder."""
    run = Path(run_path)
    in_manifest = (runs.read_manifest(run) or {}).get("stages", [])
    names = [
        s
        for s in runs.list_stages(run)
        if s != REPORT_DIR and (s != EVAL_STAGE or s in in_manifest or runs.StageFolder(run / s).is_complete())
    ]
    stages = []
    for name in names:
        folder = runs.StageFolder(run / name)
        complete = folder.summary()
        stages.append(
            {
                "name": name,
                "state": folder.state(),
                "complete": complete,
                "cost": _cost(complete),
                "metrics": _metric_series(folder.read_metrics()),
                "n_samples": len(folder.read_samples()),
            }
        )
    return {
        "schema": SUMMARY_SCHEMA,
        "run": run.name,
        "manifest": runs.read_manifest(run),
        "stages": stages,
        "eval": read_eval(run),
        "samples": _side_by_side(run, names),
        "rounds": collect_rounds(run, read_eval(run)),
    }


def collect_rounds(run: Path, ev: dict | None) -> list[dict] | None:
    """Iterated runs (rounds ≥ 2): one row per round from label@r's and reward@r's COMPLETE and eval.json."""
    n = runs.planned_rounds(run) or runs.run_rounds(run)  # folders of a bigger earlier plan are left out
    if n < 2:
        return None
    policies, rms = (ev or {}).get("policies") or {}, (ev or {}).get("reward_models") or {}
    rows = []
    for r in range(1, n + 1):
        label = runs.StageFolder(run / runs.round_name("label", r)).summary() or {}
        reward_name = runs.round_name("reward", r)
        reward = runs.StageFolder(run / reward_name).summary() or {}
        row = {
            "round": r,
            "labels": label.get("rows"),
            "rm_labels": label.get("pool", label.get("rows")),
            "rm_heldout_accuracy": (reward.get("eval") or {}).get("accuracy"),
            "rm_eval_pairs": reward.get("eval_pairs"),
            "rm_gold_agreement": (rms.get(reward_name) or {}).get("agreement"),
        }
        for pol in ("ppo", "dpo"):
            p = policies.get(runs.round_name(pol, r)) or {}
            row[f"gold/{pol}"] = (p.get("gold") or {}).get("mean")
            row[f"gain/{pol}"] = (p.get("gain") or {}).get("mean")
            row[f"kl/{pol}"] = ((p.get("kl") or {}).get("k3") or {}).get("mean")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fired td{background:#fde2e2}.ok{color:#2a7a2a}.bad{color:#b00020;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.85rem;max-height:22rem;overflow:auto}
img{max-width:100%}.note{color:#666;font-size:.9rem}
"""


def esc(v) -> str:
    return html.escape(str(v), quote=True)


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return esc(v)


def _interval(iv) -> str:
    return "—" if not iv else f"[{fmt(iv[0])}, {fmt(iv[1])}]"


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """A table; ``headers`` are plain text (escaped here), cells already-escaped HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = ""
    for i, r in enumerate(rows):
        cls = classes[i] if classes else ""
        body += (f'<tr class="{cls}">' if cls else "<tr>") + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<p><img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></p>'


def _section_stages(summary: dict) -> str:
    rows = []
    for s in summary["stages"]:
        c = s["complete"] or {}
        cost = ", ".join(f"{esc(k)} {fmt(v)}" for k, v in s["cost"].items()) or "—"
        rows.append([esc(s["name"]), esc(s["state"]), fmt(c.get("steps")), cost, fmt(c.get("finished"))])
    out = "<h2>Stages</h2>" + _table(["stage", "state", "steps", "cost", "finished"], rows)
    for s in summary["stages"]:
        c = s["complete"] or {}
        facts = [[esc(k), fmt(v)] for k, v in c.items() if _is_number(v) or isinstance(v, str)]
        if facts:
            out += f"<h3>{esc(s['name'])}: COMPLETE summary</h3>" + _table(["key", "value"], facts)
    return out


def _section_curves(summary: dict, pngs: dict[str, bytes]) -> str:
    parts = []
    for s in summary["stages"]:
        png = pngs.get(f"curves-{s['name']}")
        last = s["metrics"].get("train", {})
        if png is None and not last:
            continue
        parts.append(f"<h3>{esc(s['name'])}</h3>")
        if png is not None:
            parts.append(_img(png, f"{s['name']} training curves"))
        if f"monitors-{s['name']}" in pngs:  # RL stages: monitor/* along training
            parts.append(_img(pngs[f"monitors-{s['name']}"], f"{s['name']} monitors"))
        if last:
            parts.append(_table(["metric (train)", "last"], [[esc(k), fmt(v["last"])] for k, v in last.items()]))
    return "<h2>Training curves</h2>" + "".join(parts) if parts else ""


def _section_eval(ev: dict, pngs: dict[str, bytes]) -> str:
    conf = ev.get("confidence", 0.95)
    out = f"<h2>Evaluation</h2><p class='note'>Baseline: <b>{esc(ev.get('baseline'))}</b>; intervals at {fmt(conf)}; "
    out += f"gold win rate per prompt with ties counted ½ (tie tolerance {fmt(ev.get('tie_tol'))}); "
    out += "a prompt with several responses per policy counts the mean over response pairs.</p>"
    rows = []
    for name, p in (ev.get("policies") or {}).items():
        g, wr, gain, kl = p.get("gold") or {}, p.get("win_rate"), p.get("gain"), p.get("kl") or {}
        rows.append(
            [
                esc(name),
                fmt(p.get("n_samples")),
                f"{fmt(g.get('mean'))} {_interval(g.get('t_interval'))}",
                "baseline" if wr is None else f"{fmt(wr.get('win_rate'))} {_interval(wr.get('wilson'))}",
                "—"
                if wr is None
                else f"{fmt(wr.get('wins'))} / {fmt(wr.get('ties'))} / {fmt(wr.get('losses'))} of {fmt(wr.get('n'))}",
                "—" if gain is None else f"{fmt(gain.get('mean'))} {_interval(gain.get('t_interval'))}",
                "—" if gain is None else ("<span class='ok'>yes</span>" if gain.get("significant") else "no"),
                fmt((kl.get("k1") or {}).get("mean")),
                fmt((kl.get("k3") or {}).get("mean")),
            ]
        )
    out += "<h3>Win rates and gold</h3>" + _table(
        [
            "policy",
            "samples",
            "mean gold [t CI]",
            "win rate [Wilson]",
            "wins / ties / losses of prompts",
            "gain [t CI]",
            "gain > CI",
            "KL k1",
            "KL k3",
        ],
        rows,
    )
    out += _section_comparisons(ev, pngs)
    if "frontier" in pngs:
        out += "<h3>KL–gold frontier</h3>" + _img(pngs["frontier"], "KL-gold frontier")
    fits = ev.get("overoptimisation") or {}
    fit_rows = [
        [esc(form), fmt(f["alpha"]), fmt(f["beta"]), fmt(f["r2"]), fmt(f["n"]), fmt(f.get("peak_kl"))]
        for form, f in fits.items()
        if f
    ]
    if fit_rows or "overoptimisation" in pngs:
        out += "<h3>Over-optimisation</h3>"
        if "overoptimisation" in pngs:
            out += _img(pngs["overoptimisation"], "over-optimisation fits")
        if fit_rows:
            out += _table(["form", "α", "β", "R²", "points", "KL at peak"], fit_rows)
    out += _section_monitors(ev)
    out += _section_probes(ev.get("probes"))
    out += _section_rewardbench(ev.get("rewardbench"))
    return out


def _wins_ties_losses(w: dict) -> str:
    return f"{fmt(w.get('wins'))} / {fmt(w.get('ties'))} / {fmt(w.get('losses'))}"


def _section_comparisons(ev: dict, pngs: dict[str, bytes]) -> str:
    """Win rates by gold, proxy and judge; the judge's agreement; alignment tax; objectives; lm-eval."""
    return (
        _section_annotators(ev)
        + _section_alignment_tax(ev)
        + _section_objectives(ev, pngs)
        + _section_lm_eval(ev.get("lm_eval"))
    )


def _section_annotators(ev: dict) -> str:
    pols = [(n, p) for n, p in (ev.get("policies") or {}).items() if n != ev.get("baseline")]
    rows = []
    for name, p in pols:
        judged = (p.get("judge") or {}).get("win_rate")
        for by, wr in (
            ("gold", p.get("win_rate")),
            ("proxy (reward model)", p.get("proxy_win_rate")),
            ("judge", judged),
        ):
            if wr:
                rows.append(
                    [
                        esc(name),
                        esc(by),
                        f"{fmt(wr.get('win_rate'))} {_interval(wr.get('wilson'))}",
                        _wins_ties_losses(wr),
                        fmt(wr.get("tie_rate")),
                        fmt(wr.get("n")),
                    ]
                )
    if not any(p.get("proxy_win_rate") or p.get("judge") for _, p in pols):
        return ""  # gold alone is in the table above
    out = "<h3>Win rates by annotator</h3><p class='note'>Against the baseline, per prompt, ties counted ½.</p>"
    out += _table(["policy", "by", "win rate [Wilson]", "wins / ties / losses", "tie rate", "prompts"], rows)
    judged = [(n, p["judge"]) for n, p in pols if p.get("judge")]
    if judged:
        jm = ev.get("judge") or {}
        out += (
            f"<h3>AI judge</h3><p class='note'>Judge <b>{esc(jm.get('model'))}</b>: each policy response against the "
            "baseline's response with the same index for the prompt, asked in both orders and averaged; a pair within "
            f"{fmt(jm.get('tie_margin'))} of ½ is a tie. Agreement with gold: on the same pairs, gold ties left out, "
            "a judge tie counted ½.</p>"
        )
        jrows = []
        for name, j in judged:
            ag = j.get("agreement") or {}
            jrows.append(
                [
                    esc(name),
                    fmt(j.get("pairs")),
                    _wins_ties_losses(j.get("pair_outcomes") or {}),
                    fmt(j.get("mean_prob")),
                    f"{fmt(ag.get('agreement'))} {_interval(ag.get('wilson'))}",
                    fmt(ag.get("n")),
                    fmt(ag.get("gold_ties")),
                    fmt(j.get("position_consistency")),
                ]
            )
        out += _table(
            [
                "policy",
                "pairs",
                "pair wins / ties / losses",
                "mean P(policy better)",
                "agreement with gold [Wilson]",
                "pairs compared",
                "gold ties",
                "position consistency",
            ],
            jrows,
        )
    return out


def _section_alignment_tax(ev: dict) -> str:
    held = [(n, p["heldout"]) for n, p in (ev.get("policies") or {}).items() if p.get("heldout")]
    if not held:
        return ""
    src = (ev.get("heldout") or {}).get("source")
    out = (
        f"<h3>Alignment tax</h3><p class='note'>Held-out NLL per token of reference answers ({esc(src)}): "
        "each example's mean over its response tokens, averaged over examples; the change is the paired mean of "
        "policy − baseline over the same examples (positive: the policy fits the references worse).</p>"
    )
    rows = []
    for name, h in held:
        nll, tax = h.get("nll") or {}, h.get("tax")
        rows.append(
            [
                esc(name),
                f"{fmt(nll.get('mean'))} {_interval(nll.get('t_interval'))}",
                fmt(h.get("nll_pooled")),
                fmt(h.get("perplexity")),
                fmt(h.get("n_examples")),
                fmt(h.get("n_tokens")),
                "baseline" if tax is None else f"{fmt(tax.get('mean'))} {_interval(tax.get('t_interval'))}",
                "—" if tax is None else ("<span class='bad'>yes</span>" if tax.get("significant") else "no"),
            ]
        )
    return out + _table(
        [
            "policy",
            "NLL/token [t CI]",
            "pooled NLL/token",
            "perplexity",
            "examples",
            "tokens",
            "change vs baseline [t CI]",
            "tax > CI",
        ],
        rows,
    )


def _section_objectives(ev: dict, pngs: dict[str, bytes]) -> str:
    specs = ev.get("objectives") or {}
    pols = [(n, p["objectives"]) for n, p in (ev.get("policies") or {}).items() if p.get("objectives")]
    if not specs or not pols:
        return ""
    names = list(specs)
    rows = []
    for name, objs in pols:
        cells = [esc(name)]
        for o in names:
            m, g = (objs.get(o) or {}).get("mean") or {}, (objs.get(o) or {}).get("gain")
            cells.append(f"{fmt(m.get('mean'))} {_interval(m.get('t_interval'))}")
            cells.append("baseline" if g is None else f"{fmt(g.get('mean'))} {_interval(g.get('t_interval'))}")
        rows.append(cells)
    heads = ["policy"] + [h for o in names for h in (f"{o} mean [t CI]", f"{o} gain [t CI]")]
    out = "<h3>Objectives</h3><p class='note'>" + "; ".join(f"{esc(o)} = {esc(s)}" for o, s in specs.items())
    out += ". Gain: paired per prompt against the baseline.</p>" + _table(heads, rows)
    if "objectives" in pngs:
        out += _img(pngs["objectives"], "objectives trade-off")
    return out


def _section_lm_eval(lm: dict | None) -> str:
    """``{tasks, limit, results: {policy: {task: {metric: value}}}}``."""
    results = (lm or {}).get("results") or {}
    if not results:
        return ""
    cols: list[tuple[str, str]] = []
    for by_task in results.values():
        cols.extend((t, m) for t, ms in by_task.items() for m in ms if (t, m) not in cols)
    rows = [[esc(pol), *[fmt(by_task.get(t, {}).get(m)) for t, m in cols]] for pol, by_task in results.items()]
    note = f"<p class='note'>tasks {esc(', '.join(lm.get('tasks') or []))}; limit {fmt(lm.get('limit'))}</p>"
    return "<h3>lm-evaluation-harness</h3>" + note + _table(["policy", *[f"{t} {m}" for t, m in cols]], rows)


def _section_monitors(ev: dict) -> str:
    rows, classes = [], []
    groups = [("policy", n, p.get("monitors") or {}) for n, p in (ev.get("policies") or {}).items()]
    groups += [("training", n, m) for n, m in (ev.get("training_monitors") or {}).items()]
    for kind, name, mons in groups:
        for m in mons.values():
            rows.append(
                [
                    f"{esc(kind)} {esc(name)}",
                    esc(m.get("name")),
                    fmt(m.get("value")),
                    fmt(m.get("threshold")),
                    "<span class='bad'>FIRED</span>" if m.get("fired") else "<span class='ok'>ok</span>",
                    esc(m.get("message")),
                ]
            )
            classes.append("fired" if m.get("fired") else "")
    if not rows:
        return ""
    return "<h3>Monitors</h3>" + _table(["of", "monitor", "value", "threshold", "state", "message"], rows, classes)


def _flat_scalars(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}/"))
        elif _is_number(v) or isinstance(v, (str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def _section_probes(probes: dict | None) -> str:
    """Each probe: ``{policy: {metric: value, ...}}``; scalars shown, lists (per-item results) left out."""
    if not probes:
        return ""
    out = "<h3>Probes</h3>"
    for probe, by_policy in probes.items():
        if not isinstance(by_policy, dict):
            continue
        flat = {pol: _flat_scalars(v) for pol, v in by_policy.items() if isinstance(v, dict)}
        keys: list[str] = []
        for f in flat.values():
            keys.extend(k for k in f if k not in keys)
        out += f"<h4>{esc(probe)}</h4>" + _table(
            ["policy", *keys], [[esc(pol), *[fmt(f.get(k)) for k in keys]] for pol, f in flat.items()]
        )
    return out


def _section_rewardbench(rb: dict | None) -> str:
    """``{scorer: {"overall": acc, "n": int, "subsets": {name: {accuracy, n}}}}``."""
    if not rb:
        return ""
    subsets: list[str] = []
    for r in rb.values():
        subsets.extend(s for s in (r.get("subsets") or {}) if s not in subsets)
    rows = [
        [
            esc(name),
            fmt(r.get("overall")),
            fmt(r.get("n")),
            *[fmt((r.get("subsets") or {}).get(s, {}).get("accuracy")) for s in subsets],
        ]
        for name, r in rb.items()
    ]
    return "<h3>RewardBench accuracy</h3>" + _table(["scorer", "overall", "pairs", *subsets], rows)


def _section_reward_model(summary: dict) -> str:
    """A one-round run's reward model: its held-out accuracy (reward COMPLETE) and its agreement with
    gold on the eval responses (eval.json ``reward_models``); iterated runs show both per round."""
    stage = next((st for st in summary.get("stages") or [] if st["name"] == "reward"), None)
    done = (stage or {}).get("complete") or {}
    rms = ((summary.get("eval") or {}).get("reward_models") or {}).get("reward") or {}
    if not done and not rms:
        return ""
    held = done.get("eval") or {}
    row = [
        fmt(held.get("accuracy")),
        fmt(done.get("eval_pairs")),
        fmt(rms.get("agreement")),
        fmt(rms.get("pairs")),
        fmt(rms.get("gold_ties")),
    ]
    note = (
        "<p class='note'>Held-out accuracy: the share of held-out preference pairs the reward model ranks as "
        "labelled. Agreement with gold: over every two eval responses to the same prompt, how often it orders "
        "them as the gold reward does (gold ties left out).</p>"
    )
    cols = ["held-out accuracy", "held-out pairs", "agreement with gold", "response pairs", "gold ties"]
    return "<h2>Reward model</h2>" + note + _table(cols, [row])


def _section_rounds(rounds: list[dict] | None) -> str:
    """Iterated RLHF: per round, the labels, the reward model's accuracy and each policy's gold."""
    if not rounds:
        return ""
    cols = [
        ("round", "round"),
        ("new labels", "labels"),
        ("RM trained on", "rm_labels"),
        ("RM held-out accuracy", "rm_heldout_accuracy"),
        ("RM agreement with gold", "rm_gold_agreement"),
        ("gold ppo", "gold/ppo"),
        ("gain ppo", "gain/ppo"),
        ("KL ppo", "kl/ppo"),
        ("gold dpo", "gold/dpo"),
        ("gain dpo", "gain/dpo"),
        ("KL dpo", "kl/dpo"),
    ]
    note = (
        "<p class='note'>Round r labels new prompts with responses of round r−1's policy, trains the reward model "
        "again on every label so far (held-out accuracy: on its own held-out labels; agreement with gold: on every "
        "pair of eval responses to a prompt) and continues PPO and DPO from round r−1's policies. Gold, gain over the "
        "baseline and KL (k3) to it are the eval stage's, of ppo@r and dpo@r.</p>"
    )
    rows = [[fmt(r.get(key)) for _, key in cols] for r in rounds]
    return "<h2>Rounds</h2>" + note + _table([h for h, _ in cols], rows)


def _section_samples(samples: list[dict]) -> str:
    if not samples:
        return ""
    policies: list[str] = []
    for s in samples:
        policies.extend(p for p in s["responses"] if p not in policies)
    rows = [
        [f"<pre>{esc(s['prompt'])}</pre>", *[f"<pre>{esc(s['responses'].get(p, ''))}</pre>" for p in policies]]
        for s in samples
    ]
    return "<h2>Samples</h2><p class='note'>Each policy's response to the same prompt.</p>" + _table(
        ["prompt", *policies], rows
    )


def render_html(summary: dict, pngs: dict[str, bytes] | None = None) -> str:
    """The report page from :func:`collect`'s summary and the figures' PNG bytes."""
    pngs = pngs or {}
    man = summary.get("manifest") or {}
    head = f"<h1>alignlab run: {esc(summary['run'])}</h1>"
    if man:
        versions = ", ".join(f"{esc(k)} {esc(v)}" for k, v in (man.get("versions") or {}).items())
        head += (
            f"<p>profile <b>{esc(man.get('profile', '—'))}</b> · stages {esc(' → '.join(man.get('stages', [])))}"
            f" · created {esc(man.get('created', '—'))}</p><p class='note'>{versions}</p>"
        )
    if not pngs:
        head += "<p class='note'>No figures: install the report extra (pip install alignlab[report]) for plots.</p>"
    body = head + _section_stages(summary) + _section_curves(summary, pngs)
    if summary.get("eval"):
        body += _section_eval(summary["eval"], pngs)
    body += _section_rounds(summary.get("rounds")) or _section_reward_model(summary)
    body += _section_samples(summary.get("samples") or [])
    title = esc(f"alignlab report: {summary['run']}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def build_report(run_path: str | Path, *, save_pngs: bool = False) -> Path:
    """Write ``<run>/report/report.html`` and ``summary.json``; return the HTML's path.

    ``save_pngs`` also writes each figure as ``<run>/report/<name>.png``.
    """
    from alignlab.report.figures import all_figures, render_figure

    run = Path(run_path)
    if not run.is_dir():
        from alignlab.errors import AlignlabError

        raise AlignlabError(f"report: run folder {run} does not exist; pass the folder of a run (runs/<name>)")
    summary = collect(run)
    out_dir = run / REPORT_DIR
    pngs = {
        name: render_figure(fig, out_dir / f"{name}.png" if save_pngs else None)
        for name, fig in all_figures(summary).items()
    }
    runs.atomic_write_json(out_dir / SUMMARY_JSON, summary)
    path = out_dir / REPORT_HTML
    runs.atomic_write_text(path, render_html(summary, pngs))
    return path
