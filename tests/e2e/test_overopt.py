"""`alignlab run --profile overopt` over-optimises on purpose: along PPO training the proxy (the weak
reward model) keeps rising far ahead of the gold rule it was trained from, and eval.json shows it
from the PPO checkpoints.

How the gold curve bends depends on the CPU's floating-point kernels and on the sampler's random
draws, since the run is chaotic. With 16 labelled pairs (before 2026-12-03) gold stalled near SFT's
0.62-0.65 on an EPYC and a Xeon, but on other PPO seeds it rose to 0.96 (the proxy had learned the
rule) or collapsed. With 8 pairs, on the AVX-512 Xeon and four PPO seeds (ppo.train.seed 0-3), gold
fell 0.39-0.59 below SFT every time while the proxy rose 1.75-2.13 standard deviations, and the
training monitor fired in all four; seed 0 went 0.70, 0.47, 0.31, 0.08, 0.07, 0.10, 0.15, 0.17
(SFT 0.65). So the test asserts that shape: the proxy's gain, gold below SFT at the end, gold
measured along training, and the monitor's warning. It does not assert where gold peaks.
"""

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
def test_overopt_profile_shows_the_proxy_racing_ahead_of_gold(tmp_path):
    r = alignlab("run", "--profile", "overopt", "train.progress=false", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "overopt"
    ev = json.loads((run / "eval" / "eval.json").read_text())
    pol = ev["policies"]
    ckpts = ev["frontier"]["checkpoints"]
    assert [c["name"] for c in ckpts] == [f"ppo@{s}" for s in range(10, 81, 10)]
    gold = [c["gold"] for c in ckpts]
    assert all(0 <= g <= 1 for g in gold) and len(set(gold)) > 1  # measured at every checkpoint, and it moved
    # the proxy (normalised scores) rose by over half a standard deviation while the gold (in [0, 1])
    # ended below SFT's: measured 2.13 and -0.48 on the Xeon (seed 0)
    proxy_gain = pol["ppo"]["proxy"]["mean"] - pol["sft"]["proxy"]["mean"]
    gold_gain = pol["ppo"]["gold"]["mean"] - pol["sft"]["gold"]["mean"]
    assert proxy_gain > 0.5 and gold_gain < 0, (proxy_gain, gold_gain)
    gap = ev["training_monitors"]["checkpoints"]["proxy_gold_gap"]
    assert gap["message"] and "fired" in gap, gap  # judged across the checkpoints (fired or not: see above)
    # during training: `gold` next to `score` in metrics.jsonl, and the monitor warned in the stage's log
    rows = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["split"] == "train"]
    assert all("gold" in x and "monitor/diversity" in x for x in train)
    assert "WARNING monitor proxy_gold_gap fired" in (run / "ppo" / "log.txt").read_text()
    assert ev["training_monitors"]["ppo"]["proxy_gold_gap"]["message"]  # eval reads the stage's monitors
