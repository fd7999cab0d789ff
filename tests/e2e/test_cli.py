"""The command line, as a user runs it."""

import json
import os
import subprocess
import sys

import pytest


def alignlab(*args, cwd, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "alignlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_help_lists_stages_and_every_setting(tmp_path):
    top = alignlab("--help", cwd=tmp_path)
    assert top.returncode == 0 and "sft" in top.stdout and "run" in top.stdout and "generate" in top.stdout
    sft = alignlab("sft", "--help", cwd=tmp_path)
    assert sft.returncode == 0
    assert "train.lr = 0.0002" in sft.stdout and "model.lora.r" in sft.stdout and "peak learning rate" in sft.stdout


@pytest.mark.parametrize(
    "args,expected",
    [
        (["sft", "--profile", "tiny", "train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'?"),
        (["sft", "--profile", "nope"], "unknown profile 'nope'"),
        (["sft", "--profile", "tiny", "data.train=missing.jsonl"], "missing.jsonl"),
        (["sft", "--profile", "tiny", "model.name_or_path=./no/model"], "model folder not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, args, expected):
    r = alignlab(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("alignlab: error:"), r.stderr
    assert expected in lines[0]


def test_bad_data_line_is_named(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": 3}\n')
    r = alignlab("sft", "--profile", "tiny", f"data.train={data}", cwd=tmp_path)
    assert r.returncode == 2
    assert "d.jsonl:2" in r.stderr and "response" in r.stderr


@pytest.mark.slow
def test_run_tiny_profile_end_to_end_then_skip_then_generate(tmp_path):
    r = alignlab("run", "--profile", "tiny", "train.max_steps=6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    stage = tmp_path / "runs" / "tiny" / "sft"
    for name in ("config.yaml", "metrics.jsonl", "log.txt", "COMPLETE", "samples.jsonl", "final/config.json"):
        assert (stage / name).exists(), name
    summary = json.loads((stage / "COMPLETE").read_text())
    assert summary["steps"] == 6
    from alignlab.pipeline import STAGES
    from alignlab.profiles import load_profile

    names = [n for n in STAGES if n in load_profile("tiny")]
    assert len(names) >= 7
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / "run.json").read_text())["stages"] == names
    for name in names:  # every stage of the profile ran, in the table's order, into one run folder
        assert (run_dir / name / "COMPLETE").is_file(), name
    dpo = json.loads((run_dir / "dpo" / "COMPLETE").read_text())
    assert dpo["consumed"]["model"] == "runs/tiny/sft/final"  # wired from the upstream stage
    ppo = json.loads((run_dir / "ppo" / "COMPLETE").read_text())
    assert ppo["consumed"] == {"model": "runs/tiny/sft/final", "reward": "runs/tiny/reward/final"}
    assert dpo["consumed"]["data"] == "runs/tiny/label/preferences.jsonl"  # DPO trained on the label stage's pairs
    assert ppo["cost"]["wall_s"] > 0 and ppo["cost"]["peak_rss_mb"] > 0
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert set(evaluation["policies"]) >= {"sft", "dpo", "ppo"} and evaluation["baseline"] == "sft"
    assert evaluation["policies"]["sft"]["kl"]["k1"]["mean"] == 0.0  # the baseline is its own π_ref
    assert evaluation["policies"]["dpo"]["kl"]["k3"]["mean"] > 0.0
    import math

    bon = evaluation["frontier"]["best_of_n"]["by_gold"]  # from the baseline's 4 samples per prompt
    assert [b["n"] for b in bon][:2] == [1, 2] and len(bon) >= 3
    for b in bon:  # the best-of-n KL the report draws is the analytic one
        assert b["kl"] == pytest.approx(math.log(b["n"]) - (b["n"] - 1) / b["n"], abs=1e-9)
    golds = [b["gold"] for b in bon]
    assert all(a <= b + 1e-12 for a, b in zip(golds, golds[1:]))  # the empirical E[max of n] grows with n
    assert (run_dir / "report" / "report.html").is_file()
    from alignlab.eval.evaluate import rm_gold_agreement

    sampled = [json.loads(x) for x in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    rm = evaluation["reward_models"]["reward"]  # the one-round run's reward model against gold, from the proxy scores
    assert rm == rm_gold_agreement(sampled, [r["score"] for r in sampled]) and rm["pairs"] > 0
    html_text = (run_dir / "report" / "report.html").read_text()
    assert "<h2>Reward model</h2>" in html_text and "<h2>Rounds</h2>" not in html_text
    summary_json = json.loads((run_dir / "report" / "summary.json").read_text())
    rows = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    reported = next(s for s in summary_json["stages"] if s["name"] == "sft")["metrics"]["train"]["loss"]["values"]
    assert reported == [r["loss"] for r in rows if r["split"] == "train"]  # every number comes from the run folder
    assert next(s for s in summary_json["stages"] if s["name"] == "ppo")["cost"]["wall_s"] > 0
    _serve_views(tmp_path / "runs")
    again = alignlab("run", "--profile", "tiny", "train.max_steps=6", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("is complete; skipping") == len(names), again.stdout
    gen = alignlab("generate", "--model", str(stage / "final"), "--prompt", "Hi", "--max-new-tokens", "5", cwd=tmp_path)
    assert gen.returncode == 0 and gen.stdout.startswith("> Hi"), gen.stderr[-2000:]


@pytest.mark.slow
def test_interrupted_stage_is_resumed_by_run(tmp_path, monkeypatch):
    """`alignlab run` continues a stage whose folder exists but is not complete."""
    from alignlab.config import SFTConfig, load_config
    from alignlab.profiles import load_profile
    from alignlab.trainers.sft import train_sft

    monkeypatch.chdir(tmp_path)  # restored afterwards: later tests must not see this run folder
    cfg = load_config(
        SFTConfig,
        None,
        ["train.max_steps=6", "train.save_every=3", "train.progress=false"],
        base=load_profile("tiny")["sft"],
    )
    train_sft(cfg, stop_after=3)
    r = alignlab(
        "run", "--profile", "tiny", "train.max_steps=6", "train.save_every=3", "train.progress=false", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "runs" / "tiny" / "sft" / "log.txt").read_text()
    assert "resumed from" in log and "step-00000003" in log


def _serve_views(runs_dir):
    """The web app opens every view of a run that `alignlab run --profile tiny` produced."""
    from fastapi.testclient import TestClient

    from alignlab.web.app import create_app

    client = TestClient(create_app(runs_dir, store_path=runs_dir / "labels.sqlite"), base_url="http://127.0.0.1")
    for url in ("/", "/runs/tiny", "/runs/tiny/ppo/rollouts?step=1", "/simulator?run=tiny", "/label"):
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code)
    metrics = client.get("/api/runs/tiny/metrics").json()
    assert metrics, "the dashboard's metrics endpoint has the run's curves"
    rollout = client.get("/api/runs/tiny/ppo/rollouts/1").json()
    assert rollout
    assert client.get("/runs/..%2F..%2Fetc").status_code == 404


def test_the_report_of_a_finished_run_runs_again(tmp_path):
    """`alignlab report runs/x` (the README's "the report again") rewrites a complete report instead of refusing."""
    import yaml

    from alignlab.profiles import load_profile

    tiny = load_profile("tiny")
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({k: tiny[k] for k in ("sft", "report")}))
    r = alignlab("run", "--profile", "two.yaml", "train.max_steps=2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = tmp_path / "runs" / "tiny" / "report"
    first = (report / "COMPLETE").stat().st_mtime_ns
    again = alignlab("report", "runs/tiny", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (report / "COMPLETE").stat().st_mtime_ns > first and (report / "report.html").is_file()
