"""`alignlab run ... rounds=2` on the tiny model: a second round of label, reward, dpo and ppo in the
same run folder, each wired to the round before, evaluated and reported per round; skipped when
complete, continued in round 2 when interrupted there."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROUND_STAGES = ("label", "reward", "dpo", "ppo")


def alignlab(*args, cwd, timeout=600):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "alignlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def _complete(run, stage) -> dict:
    return json.loads((run / stage / "COMPLETE").read_text())


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_two_rounds_of_the_tiny_pipeline(tmp_path):
    from alignlab.profiles import load_profile

    tiny = load_profile("tiny")  # the RL-from-a-rule stages (rloo, grpo, best-of-n) left out: seconds saved
    profile = {k: tiny[k] for k in ("sft", "label", "reward", "dpo", "ppo", "eval", "report")}
    (tmp_path / "rounds.yaml").write_text(yaml.safe_dump(profile))
    args = ("run", "--profile", "rounds.yaml", "rounds=2", "train.max_steps=3", "train.progress=false")
    r = alignlab(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    names = ["sft", *ROUND_STAGES, *(f"{s}@2" for s in ROUND_STAGES), "eval", "report"]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["stages"] == names and manifest["rounds"] == 2
    for name in names:
        assert (run / name / "COMPLETE").is_file(), name

    # round 2's labels: new prompts, sampled from round 1's PPO policy
    label1, label2 = _complete(run, "label"), _complete(run, "label@2")
    assert label2["consumed"]["model"] == "runs/tiny/ppo/final" and label2["round"] == 2
    rows1, rows2 = _lines(run / "label" / "preferences.jsonl"), _lines(run / "label@2" / "preferences.jsonl")
    assert {x["policy"] for x in rows2} == {"runs/tiny/ppo/final"}
    assert not {x["prompt"] for x in rows1} & {x["prompt"] for x in rows2}  # the next slice of the prompt set
    # round 2's reward model: from the SFT model again, trained on both rounds' labels
    pool = _lines(run / "label@2" / "preferences-all.jsonl")
    assert len(pool) == len(rows1) + len(rows2) == label2["pool"] and label1["rows"] == len(rows1)
    assert [x["round"] for x in pool] == [1] * len(rows1) + [2] * len(rows2)
    reward2 = _complete(run, "reward@2")
    assert reward2["consumed"] == {"model": "runs/tiny/sft/final", "data": "runs/tiny/label@2/preferences-all.jsonl"}
    assert reward2["train_items"] + reward2["eval_pairs"] == len(pool)
    # PPO and DPO continue from round 1's policies: PPO on round 2's reward model, DPO on round 2's pairs
    assert _complete(run, "ppo@2")["consumed"] == {
        "model": "runs/tiny/ppo/final",
        "reward": "runs/tiny/reward@2/final",
        "reference": "runs/tiny/sft/final",  # the KL penalty stays against the SFT model
    }
    assert "reference" not in _complete(run, "ppo")["consumed"]
    assert _complete(run, "dpo@2")["consumed"] == {
        "model": "runs/tiny/dpo/final",
        "data": "runs/tiny/label@2/preferences.jsonl",
    }
    assert yaml.safe_load((run / "ppo@2" / "config.yaml").read_text())["train"]["run_name"] == "tiny@2"

    # eval: every round's policies, the newest reward model as proxy, each round's RM against gold
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert list(ev["policies"]) == ["sft", "dpo", "ppo", "dpo@2", "ppo@2"]
    assert _complete(run, "eval")["consumed"]["proxy"] == "runs/tiny/reward@2/final"
    assert set(ev["reward_models"]) == {"reward", "reward@2"} and ev["reward_models"]["reward@2"]["pairs"] > 0
    # the report's per-round table holds the eval's and the COMPLETE markers' numbers
    table = json.loads((run / "report" / "summary.json").read_text())["rounds"]
    assert [row["round"] for row in table] == [1, 2]
    for row, suffix in zip(table, ("", "@2")):
        assert row["labels"] == _complete(run, f"label{suffix}")["rows"]
        assert row["rm_heldout_accuracy"] == _complete(run, f"reward{suffix}")["eval"]["accuracy"]
        assert row["rm_gold_agreement"] == ev["reward_models"][f"reward{suffix}"]["agreement"]
        for pol in ("ppo", "dpo"):
            p = ev["policies"][f"{pol}{suffix}"]
            assert row[f"gold/{pol}"] == p["gold"]["mean"] and row[f"kl/{pol}"] == p["kl"]["k3"]["mean"]
            assert row[f"gain/{pol}"] == p["gain"]["mean"]
    assert table[1]["rm_labels"] == len(pool) and table[0]["rm_labels"] == len(rows1)
    assert "<h2>Rounds</h2>" in (run / "report" / "report.html").read_text()

    # complete: everything is skipped
    again = alignlab(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("is complete; skipping") == len(names), again.stdout

    # killed during round 2's PPO (no marker, no eval yet): the run continues in round 2
    (run / "ppo@2" / "COMPLETE").unlink()
    shutil.rmtree(run / "eval")
    shutil.rmtree(run / "report")
    resumed = alignlab(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("is complete; skipping") == len(names) - 3, resumed.stdout
    assert "ppo@2: continuing the interrupted stage in runs/tiny/ppo@2" in resumed.stdout
    assert "resumed from" in (run / "ppo@2" / "log.txt").read_text()
    assert (run / "ppo@2" / "COMPLETE").is_file() and (run / "report" / "summary.json").is_file()

    # back to one round: eval and report are redone on round 1 only (the @2 folders stay, unread)
    one = alignlab(
        "run", "--profile", "rounds.yaml", "rounds=1", "train.max_steps=3", "train.progress=false", cwd=tmp_path
    )
    assert one.returncode == 0, one.stderr[-3000:]
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert set(ev["policies"]) == {"sft", "dpo", "ppo"} and set(ev["reward_models"]) == {"reward"}
    assert json.loads((run / "report" / "summary.json").read_text())["rounds"] is None
    assert (run / "ppo@2" / "COMPLETE").is_file()
