"""build_report on run folders fabricated here: self-contained HTML, escaped text, summary = files."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from alignlab import runs
from alignlab.eval import evaluate
from alignlab.report import build_report, collect, save_figures

EVIL = "<script>alert('x')</script> & <b>bold</b>"


def _resource_loads(page: str) -> list[str]:
    """Every attribute or CSS reference that would make a browser fetch something."""
    pattern = (
        r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?!data:)[a-z]+:|url\(\s*["']?\s*(?!data:)[a-z]+:|@import"""
    )
    return re.findall(pattern, page, flags=re.IGNORECASE)


def _sft_stage(run, *, complete=True):
    sft = runs.StageFolder(run / "sft")
    rows = [
        {"step": i, "split": "train", "loss": 2.0 / (i + 1), "lr": 1e-4, "tokens_per_s": 100.0 + i} for i in range(10)
    ]
    rows += [{"step": 9, "split": "eval", "nll": 1.5}]
    runs.atomic_write_jsonl(sft.metrics, rows)
    runs.atomic_write_text(sft.config, "lr: 1.0e-4\n")
    sft.write_samples([runs.sample_row(f"question {i}", f"sft answer {i}", True, 3, None) for i in range(3)])
    if complete:
        sft.write_complete(
            {
                "stage": "sft",
                "steps": 10,
                "train_loss": 0.2,
                "wall_time_s": 12.5,
                "tokens": 4096,
                "peak_memory_gb": 1.25,
            }
        )
    return rows


@pytest.fixture()
def full_run(tmp_path):
    run = tmp_path / "demo"
    runs.write_manifest(run, profile="tiny", stages=["sft", "ppo"])
    sft_rows = _sft_stage(run)
    ppo = runs.StageFolder(run / "ppo")
    ppo_rows = [
        {
            "step": i,
            "split": "train",
            "score": 0.1 * i,
            "kl": 0.05 * i,
            "beta": 0.1,
            "value/loss": 1.0 / (i + 1),
            "policy/clipfrac": 0.1,
            "entropy": 1.5 * 0.97**i,
        }
        for i in range(20)
    ]
    ppo_rows[3]["kl"] = float("nan")  # a non-finite value must not break the report
    runs.atomic_write_jsonl(ppo.metrics, ppo_rows)
    runs.atomic_write_text(ppo.config, "beta: 0.1\n")
    ppo.write_samples(
        [runs.sample_row(f"question {i}", EVIL if i == 0 else f"ppo answer {i}", True, 5, 0.5) for i in range(3)]
    )
    ppo.write_complete({"stage": "ppo", "steps": 20, "score": 1.9, "kl": 0.95, "wall_time_s": 40.0})

    rng = np.random.default_rng(0)

    def rows(shift, per_prompt, kl):
        out = []
        for p in range(12):
            for _ in range(per_prompt):
                lp = rng.normal(-1, 0.1, size=4)
                g = p / 12 + shift + rng.normal(0, 0.2)
                out.append(
                    {
                        "prompt": f"question {p}",
                        "response": EVIL if p == 0 else f"answer {p} {rng.integers(99)}",
                        "gold": g,
                        "score": g,
                        "logprobs": lp.tolist(),
                        "ref_logprobs": (lp - kl).tolist(),
                    }
                )
        return out

    ev = evaluate.evaluate_run(
        run,
        policies={"sft": rows(0.0, 4, 0.0), "ppo": rows(0.4, 1, 0.1)},
        checkpoints={f"ppo/{k}": rows(0.15 * k, 1, 0.05 * k) for k in (1, 2, 3)},
        probes={"sycophancy": {"sft": {"n": 30, "agree_rate": 0.2}, "ppo": {"n": 30, "agree_rate": 0.4}}},
        rewardbench={"rm": {"overall": 0.7, "n": 10, "subsets": {"chat": {"accuracy": 0.8, "n": 5}}}},
    )
    return run, sft_rows, ppo_rows, ev


def test_full_report(full_run):
    run, sft_rows, ppo_rows, ev = full_run
    path = build_report(run)
    assert path == run / "report" / "report.html"
    page = path.read_text(encoding="utf-8")

    assert _resource_loads(page) == []
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page  # the sample's script tag only appears escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert page.count("data:image/png;base64,") >= 4  # sft and ppo curves, frontier, over-optimisation
    for text in ("Win rates", "Monitors", "entropy_collapse", "Probes", "agree_rate", "RewardBench", "Samples"):
        assert text in page

    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(collect(run)))
    assert summary["eval"] == json.loads((run / "eval" / "eval.json").read_text())
    sft, ppo = summary["stages"]
    assert sft["complete"] == runs.StageFolder(run / "sft").summary()
    assert sft["cost"] == {"wall_time_s": 12.5, "tokens": 4096, "peak_memory_gb": 1.25}
    train = sft["metrics"]["train"]
    assert train["loss"]["values"] == [r["loss"] for r in sft_rows if r["split"] == "train"]
    assert train["loss"]["steps"] == list(range(10))
    assert sft["metrics"]["eval"]["nll"] == {"steps": [9], "values": [1.5], "last": 1.5}
    kl = ppo["metrics"]["train"]["kl"]["values"]
    assert kl[3] is None and kl[4] == ppo_rows[4]["kl"]
    # numbers shown in the page are the files' numbers
    assert "12.5" in page and "4096" in page
    wr = ev["policies"]["ppo"]["win_rate"]["win_rate"]
    assert f"{wr:.4g}" in page
    # side by side: eval/samples.jsonl answers of both policies to the same prompt
    first = summary["samples"][0]
    assert set(first["responses"]) == {"sft", "ppo"}


def test_sft_only_run_still_reports(tmp_path):
    run = tmp_path / "only-sft"
    runs.write_manifest(run, profile="tiny", stages=["sft", "dpo"])
    _sft_stage(run)
    page = build_report(run).read_text()
    assert "Training curves" in page and "Evaluation" not in page
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["eval"] is None
    assert [(s["name"], s["state"]) for s in summary["stages"]] == [("sft", "complete"), ("dpo", "absent")]
    # samples fall back to the stages' samples.jsonl
    assert summary["samples"][0]["responses"] == {"sft": "sft answer 0"}


def test_interrupted_stage_and_pngs(tmp_path):
    run = tmp_path / "r"
    _sft_stage(run, complete=False)
    page = build_report(run).read_text()
    assert "interrupted" in page
    paths = save_figures(run)
    assert [p.name for p in paths] == ["curves-sft.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_module_imports_no_torch_and_no_matplotlib():
    code = "import sys, alignlab.report; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_a_complete_eval_stage_shows_its_cost(tmp_path):
    run = tmp_path / "r"
    runs.write_manifest(run, profile="tiny", stages=["sft", "eval"])
    _sft_stage(run)
    evaluate.evaluate_run(run, policies={"sft": [{"prompt": "q", "response": "a", "gold": 1.0}]})
    runs.StageFolder(run / "eval").write_complete({"stage": "eval", "wall_time_s": 3.5})
    summary = collect(run)
    assert [s["name"] for s in summary["stages"]] == ["sft", "eval"]
    assert summary["stages"][1]["cost"] == {"wall_time_s": 3.5}
    assert summary["eval"]["policies"]["sft"]["gold"]["mean"] == 1.0
    page = build_report(run).read_text()
    assert "wall_time_s 3.5" in page


def _table_after(page: str, heading: str) -> list[list[str]]:
    """The body cells of the first table after ``<h3>heading</h3>``."""
    found = re.search(re.escape(f"<h3>{heading}</h3>") + r".*?<tbody>(.*?)</tbody>", page, flags=re.S)
    assert found, heading
    return [re.findall(r"<td>(.*?)</td>", row, flags=re.S) for row in re.findall(r"<tr>(.*?)</tr>", found.group(1))]


def test_judge_alignment_tax_objectives_and_lm_eval_in_the_report(tmp_path):
    from alignlab.report.build import fmt

    run = tmp_path / "multi"
    runs.write_manifest(run, profile="tiny", stages=["sft", "dpo", "ppo", "eval"])
    _sft_stage(run)
    rng = np.random.default_rng(1)

    def rows(shift, judged):
        out = []
        for p in range(10):
            for _ in range(2):
                g = p / 10 + shift + rng.normal(0, 0.2)
                row = {"prompt": f"q{p}", "response": f"a{p} {'!' * int(rng.integers(3))}", "gold": g, "score": g + 0.1}
                if judged:
                    row["judge"], row["judge_consistent"] = float(rng.uniform(0.2, 0.9)), bool(rng.integers(2))
                out.append(row)
        return out

    base_nll = rng.uniform(1, 3, size=6)  # the same six reference answers for every policy
    heldout = {
        name: [{"nll": float(v) * (1 + d), "tokens": 4} for v in base_nll]
        for name, d in (("sft", 0.0), ("dpo", 0.1), ("ppo", 0.3))
    }
    lm = {
        "tasks": ["hellaswag"],
        "limit": 10,
        "results": {n: {"hellaswag": {"acc,none": a}} for n, a in (("sft", 0.3), ("dpo", 0.35), ("ppo", 0.28))},
    }
    ev = evaluate.evaluate_run(
        run,
        policies={"sft": rows(0.0, False), "dpo": rows(0.2, True), "ppo": rows(0.4, True)},
        judge="tiny",
        heldout=heldout,
        heldout_source="demo:sft",
        objectives={"abc": "char_fraction(chars=abc)", "words": "length(scale=1)"},
        lm_eval=lm,
    )
    page = build_report(run).read_text(encoding="utf-8")
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["eval"] == json.loads((run / "eval" / "eval.json").read_text())
    ev = summary["eval"]
    pol = ev["policies"]

    def iv(d, key):
        return f"{fmt(d[key][0])}, {fmt(d[key][1])}"

    annot = _table_after(page, "Win rates by annotator")
    want = []
    for name in ("dpo", "ppo"):
        for by, wr in (
            ("gold", pol[name]["win_rate"]),
            ("proxy (reward model)", pol[name]["proxy_win_rate"]),
            ("judge", pol[name]["judge"]["win_rate"]),
        ):
            want.append(
                [
                    name,
                    by,
                    f"{fmt(wr['win_rate'])} [{iv(wr, 'wilson')}]",
                    f"{wr['wins']} / {wr['ties']} / {wr['losses']}",
                    fmt(wr["tie_rate"]),
                    str(wr["n"]),
                ]
            )
    assert annot == want

    judge = _table_after(page, "AI judge")
    for cells, name in zip(judge, ("dpo", "ppo")):
        j = pol[name]["judge"]
        po, ag = j["pair_outcomes"], j["agreement"]
        assert cells == [
            name,
            str(j["pairs"]),
            f"{po['wins']} / {po['ties']} / {po['losses']}",
            fmt(j["mean_prob"]),
            f"{fmt(ag['agreement'])} [{iv(ag, 'wilson')}]",
            str(ag["n"]),
            str(ag["gold_ties"]),
            fmt(j["position_consistency"]),
        ]
    assert "Judge <b>tiny</b>" in page

    tax = _table_after(page, "Alignment tax")
    assert [c[0] for c in tax] == ["sft", "dpo", "ppo"]
    for cells, name in zip(tax, ("sft", "dpo", "ppo")):
        h = pol[name]["heldout"]
        assert cells[1] == f"{fmt(h['nll']['mean'])} [{iv(h['nll'], 't_interval')}]"
        assert cells[2:6] == [fmt(h["nll_pooled"]), fmt(h["perplexity"]), str(h["n_examples"]), str(h["n_tokens"])]
        assert cells[6] == ("baseline" if name == "sft" else f"{fmt(h['tax']['mean'])} [{iv(h['tax'], 't_interval')}]")
    assert pol["ppo"]["heldout"]["tax"]["mean"] == pytest.approx(0.3 * base_nll.mean() / 4)  # planted: +30% NLL
    assert pol["dpo"]["heldout"]["tax"]["significant"]  # +10% on every example: beyond the interval

    objs = _table_after(page, "Objectives")
    for cells, name in zip(objs, ("sft", "dpo", "ppo")):
        o = pol[name]["objectives"]
        expect = [name]
        for key in ("abc", "words"):
            expect.append(f"{fmt(o[key]['mean']['mean'])} [{iv(o[key]['mean'], 't_interval')}]")
            g = o[key]["gain"]
            expect.append("baseline" if g is None else f"{fmt(g['mean'])} [{iv(g, 't_interval')}]")
        assert cells == expect
    assert 'alt="objectives trade-off"' in page

    lm_rows = _table_after(page, "lm-evaluation-harness")
    assert lm_rows == [[n, fmt(lm["results"][n]["hellaswag"]["acc,none"])] for n in ("sft", "dpo", "ppo")]
    assert (run / "report").is_dir() and save_figures(run)[-1].name == "objectives.png"
