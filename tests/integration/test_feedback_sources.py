"""``label`` and ``data check`` end to end on the tiny model, through the argparse functions the CLI wires in."""

import argparse
import json

import pytest

from alignlab.data import load_records
from alignlab.errors import ConfigError
from alignlab.feedback.cli import add_data_commands, add_label_commands, run_data_command, run_label_command
from alignlab.feedback.sources import label
from alignlab.feedback.store import LabelStore


def parse(argv):
    parser = argparse.ArgumentParser(prog="alignlab")
    sub = parser.add_subparsers(dest="command")
    add_label_commands(sub)
    add_data_commands(sub)
    return parser.parse_args(argv)


def test_label_simulated_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "pref.jsonl"
    args = parse(["label", "--source", "simulated", "--policy", "tiny", "--prompts", "demo:prompts", "--limit", "4", "--k", "2",
                  "--out", str(out), "--gold", "demo", "--max-new-tokens", "8", "--store", str(tmp_path / "s.db")])  # fmt: skip
    assert run_label_command(args) == 0
    assert "simulated:" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["source"] == "simulated" and r["policy"] == "tiny" and r["gold"] == "demo" for r in rows)
    recs = load_records(out, "preference").records
    assert len(recs) == len(rows)
    # the same labels are in the store, and export from there identically
    store = LabelStore(tmp_path / "s.db")
    assert len(store.labels()) == len(rows)
    assert [(r["chosen"], r["rejected"]) for r in store.preference_rows()] == [
        (r["chosen"], r["rejected"]) for r in rows
    ]


def test_label_rankings_and_judge_on_tiny(tmp_path):
    out = tmp_path / "rank.jsonl"
    summary = label("simulated", out=out, policy="tiny", limit=3, k=3, max_new_tokens=8, seed=1)
    assert summary["kind"] == "ranking" and summary["rows"] == len(load_records(out, "ranking").records)
    out = tmp_path / "judge.jsonl"
    summary = label("judge", out=out, policy="tiny", judge_model="tiny", limit=3, k=2, max_new_tokens=8)
    assert summary["kind"] == "preference" and summary["rows"] >= 1 and 0 <= summary["position_consistency"] <= 1
    assert summary["gold_agreement"] is None or 0 <= summary["gold_agreement"] <= 1
    assert {r.chosen for r in load_records(out, "preference").records}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["source"] == "judge" and r["annotator"] == "tiny" for r in rows)


def test_label_constitutional_writes_both_files(tmp_path):
    args = parse(["label", "--source", "constitutional", "--policy", "tiny", "--judge-model", "tiny", "--limit", "2",
                  "--out", str(tmp_path / "rlaif.jsonl"), "--max-new-tokens", "8"])  # fmt: skip
    assert run_label_command(args) == 0
    assert load_records(tmp_path / "rlaif.jsonl", "preference").records
    sft = load_records(tmp_path / "rlaif.sft.jsonl", "sft").records
    assert sft and all(r.response for r in sft)


def test_label_human_in_the_terminal(tmp_path):
    answers = iter(["a", "b # shorter"])
    out = tmp_path / "human.jsonl"
    summary = label(
        "human",
        out=out,
        prompts=["Salt in pasta water?", "Rest steak?"],
        responses=[["Yes, plenty.", "No."], ["Yes, five minutes.", "Never."]],
        store=tmp_path / "h.db",
        annotator="me",
        input_fn=lambda _: next(answers),
        print_fn=lambda *a: None,
    )
    assert summary["labelled_now"] == 2 and summary["rows"] == 2
    recs = load_records(out, "preference").records
    assert [(r.chosen, r.rejected) for r in recs] == [("Yes, plenty.", "No."), ("Never.", "Yes, five minutes.")]
    with pytest.raises(ConfigError, match="needs --store"):
        label("human", out=out, prompts=["q"], responses=[["a", "b"]])
    with pytest.raises(ConfigError, match="did you mean 'judge'"):
        label("judg", out=out, prompts=["q"], responses=[["a", "b"]])


def test_data_check_command(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "What is 2+2?", "chosen": "2+2 equals 4.", "rejected": "2+2 is 4."}) + "\n"
        + json.dumps({"prompt": "Capital of France?", "chosen": "Paris is the capital.", "rejected": "I think it might be Lyon, not sure."}) + "\n"
    )  # fmt: skip
    assert run_data_command(parse(["data", "check", str(path)])) == 0
    text = capsys.readouterr().out
    assert "nearly the same" in text and f"{path}:1" in text
    assert run_data_command(parse(["data", "check", str(path), "--json", "--strict"])) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checks"]["near_identical"]["where"] == [f"{path}:1"] and not report["ok"]
    assert run_data_command(parse(["data", "check", "demo:preferences", "--strict", "--eval", "demo:prompts"])) == 0
