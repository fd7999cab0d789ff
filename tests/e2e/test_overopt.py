"""`alignlab run --profile overopt` over-optimises on purpose: along PPO training the proxy (the weak
reward model) keeps rising while the gold rule it was trained from peaks and turns down, and eval.json
shows it from the PPO checkpoints (measured at 140f357: gold 0.68 at step 10, 0.89 at step 30, 0.47 at
step 50, 0.67 at step 80; proxy −0.95 for SFT, 1.09 for the final PPO policy; the exact numbers move
with any change to sampling, so the test asserts the shape, not the values)."""

import json
import os
import subprocess
import sys

import pytest


def alignlab(*args, cwd, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "alignlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_overopt_profile_shows_gold_turning_down_while_the_proxy_rises(tmp_path):
    r = alignlab("run", "--profile", "overopt", "train.progress=false", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "overopt"
    ev = json.loads((run / "eval" / "eval.json").read_text())
    pol = ev["policies"]
    ckpts = ev["frontier"]["checkpoints"]
    assert [c["name"] for c in ckpts] == [f"ppo@{s}" for s in range(10, 81, 10)]
    gold = [c["gold"] for c in ckpts]
    peak = max(range(len(gold)), key=gold.__getitem__)
    # proxy at the end above the start; gold at the end below its best along training, and that peak
    # is inside training (it rose first: not a run that only got worse)
    assert pol["ppo"]["proxy"]["mean"] > pol["sft"]["proxy"]["mean"] + 0.5
    assert 0 < peak < len(gold) - 1 and gold[peak] > gold[0] and gold[-1] < gold[peak] - 0.05
    gap = ev["training_monitors"]["checkpoints"]["proxy_gold_gap"]
    assert gap["fired"], gap
    # during training: `gold` next to `score` in metrics.jsonl, and the monitor warned in the stage's log
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["split"] == "train"]
    assert all("gold" in x and "monitor/diversity" in x for x in train)
    assert "WARNING monitor proxy_gold_gap fired" in (run / "ppo" / "log.txt").read_text()
    assert ev["training_monitors"]["ppo"]["proxy_gold_gap"]["fired"]
