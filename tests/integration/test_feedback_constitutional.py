"""Constitutional feedback on the tiny model: critique/revision SFT rows and RLAIF preferences, with provenance, that load as training data."""

import pytest

from alignlab.data import load_records
from alignlab.errors import ConfigError
from alignlab.feedback.constitutional import Sampler, ai_preferences, critique_and_revise, load_principles
from alignlab.feedback.judge import Judge
from alignlab.models.presets import build_tiny
from alignlab.runs import atomic_write_jsonl

PROMPTS = ["How do I keep herbs fresh?", "What can I cook with leftover rice?", "How do I stop onions making me cry?"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def test_default_principles_load_and_bad_files_name_the_field(tmp_path):
    names = [p.name for p in load_principles()]
    assert "harmless" in names and len(names) == len(set(names)) >= 3
    bad = tmp_path / "p.yaml"
    bad.write_text("principles:\n  - name: x\n    critique: c\n    revision: ''\n    choice: q\n")
    with pytest.raises(ConfigError, match=r"p.yaml: principles\[0\]: field 'revision' must be non-empty"):
        load_principles(bad)


def test_critique_revision_rows_keep_provenance_and_load_as_sft(tiny, tmp_path):
    model, tok = tiny
    principles = load_principles()
    sampler = Sampler(model, tok, max_new_tokens=12, name="tiny")
    rows, stats = critique_and_revise(sampler, PROMPTS, principles, seed=3)
    assert stats["prompts"] == 3 and stats["rows"] + stats["dropped_empty"] == 3 and rows
    by_name = {p.name: p for p in principles}
    for r in rows:
        assert r["source"] == "constitutional" and r["model"] == "tiny" and r["seed"] == 3
        assert r["principle"] in by_name and r["critique_request"] == by_name[r["principle"]].critique
        assert r["response"] and r["critique"] and r["original"]
    again, _ = critique_and_revise(sampler, PROMPTS, principles, seed=3)
    assert again == rows  # seeded: reproducible
    atomic_write_jsonl(tmp_path / "sft.jsonl", rows)
    recs = load_records(tmp_path / "sft.jsonl", "sft").records
    assert [r.response for r in recs] == [r["response"] for r in rows]
    assert recs[0].prompt[-1].content in PROMPTS


def test_rlaif_preferences_load_as_preference_data(tiny, tmp_path):
    model, tok = tiny
    judge = Judge(model, tok, name="tiny-judge")
    sampler = Sampler(model, tok, max_new_tokens=12, temperature=1.0, name="tiny")
    rows, stats = ai_preferences(sampler, judge, PROMPTS, load_principles(), seed=1)
    assert stats["rows"] == len(rows) and stats["rows"] + stats["dropped"] == 3 and rows
    for r in rows:
        assert r["source"] == "rlaif" and r["judge"] == "tiny-judge" and r["principle"]
        assert 0.5 <= r["confidence"] <= 1
    atomic_write_jsonl(tmp_path / "pref.jsonl", rows)
    recs = load_records(tmp_path / "pref.jsonl", "preference").records
    assert [(r.chosen, r.rejected) for r in recs] == [(r["chosen"], r["rejected"]) for r in rows]
    # given pairs: the judge's principle-guided choice is the swap-averaged one
    pairs = [("Wrap them in a damp towel.", "Ignore them."), ("Fried rice.", "Nothing.")]
    rows, _ = ai_preferences(sampler, judge, PROMPTS[:2], load_principles(), seed=1, responses=pairs)
    assert len(rows) == 2 and all({r["chosen"], r["rejected"]} == set(p) for r, p in zip(rows, pairs))


def test_constitutional_labels_train_through_the_sft_and_dpo_stages(tmp_path, monkeypatch):
    """`alignlab label --source constitutional` output goes straight into `alignlab sft` (revisions) and `alignlab dpo` (RLAIF pairs)."""
    import json

    from alignlab.cli import main

    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    out, sft_out = tmp_path / "cai.jsonl", tmp_path / "cai.sft.jsonl"
    args = ["label", "--source", "constitutional", "--policy", "tiny", "--judge-model", "tiny", "--limit", "6"]
    assert main([*args, "--max-new-tokens", "8", "--out", str(out), "--sft-out", str(sft_out)]) == 0
    assert out.stat().st_size and sft_out.stat().st_size
    common = [
        f"train.output_dir={tmp_path / 'runs'}",
        "train.max_steps=1",
        "train.progress=false",
        "train.num_samples=0",
    ]
    assert main(["sft", "--profile", "tiny", f"data.train={sft_out}", "data.eval_fraction=0", *common]) == 0
    assert main(["dpo", "--profile", "tiny", f"data.train={out}", "data.eval_fraction=0", *common]) == 0
    done = json.loads((tmp_path / "runs" / "tiny" / "dpo" / "COMPLETE").read_text())
    assert done["train_examples"] >= 1 and done["steps"] == 1
