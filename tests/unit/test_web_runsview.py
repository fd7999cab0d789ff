"""The web app's reading of run folders: chartable keys, series, thinning, liveness (no server)."""

from __future__ import annotations

import os
import time

from alignlab import runs
from alignlab.web import runsview
from alignlab.web.testing import make_demo_run


def test_chart_keys_known_first_then_others_and_no_bookkeeping():
    rows = [{"step": 1, "split": "train", "loss": 1.0, "lr": 0.1, "zeta": 2, "kl": 0.5, "flag": True, "note": "x"}]
    assert runsview.chart_keys(rows) == ["loss", "kl", "zeta"]


def test_series_by_split_skips_rows_without_a_step():
    rows = [
        {"step": 1, "split": "train", "loss": 2.0},
        {"step": 2, "split": "train", "loss": 1.5},
        {"step": 2, "split": "eval", "loss": 1.7},
        {"split": "train", "loss": 9.0},
        {"step": 3, "loss": 1.0},  # no split: train
    ]
    assert runsview.series(rows) == {"loss": {"train": [[1, 2, 3], [2.0, 1.5, 1.0]], "eval": [[2], [1.7]]}}


def test_thinning_keeps_the_ends_and_the_limit():
    xs = list(range(10_001))
    tx, ty = runsview.thin(xs, xs, limit=1000)
    assert len(tx) <= 1001 and tx[0] == 0 and tx[-1] == 10_000 and tx == ty
    assert runsview.thin([1, 2], [3, 4], limit=5) == ([1, 2], [3, 4])


def test_live_only_while_metrics_change_and_not_once_complete(tmp_path):
    make_demo_run(tmp_path, complete=False)
    sf = runs.StageFolder(tmp_path / "demo" / "ppo")
    assert runsview.stage_info(sf)["live"] is True
    assert runsview.stage_info(sf, now=time.time() + runsview.LIVE_SECONDS + 1)["live"] is False
    done = runs.StageFolder(tmp_path / "demo" / "sft")
    os.utime(done.metrics)  # touched just now, but complete
    assert runsview.stage_info(done)["live"] is False


def test_label_items_pair_stages_answers_by_prompt(tmp_path):
    make_demo_run(tmp_path)
    items = dict(runsview.label_items(tmp_path, "demo"))
    assert set(items) == {"How do I boil an egg?", "What is a roux?"}
    assert [s for s, _ in items["How do I boil an egg?"]] == ["sft", "reward", "dpo", "ppo"]


def test_prompts_of_collects_samples_and_rollout_prompts(tmp_path):
    make_demo_run(tmp_path)
    prompts = runsview.prompts_of(tmp_path, "demo")
    assert prompts[0] == "How do I boil an egg?" and any("sample 0" in p for p in prompts)


def test_the_report_folder_is_not_a_stage(tmp_path):
    make_demo_run(tmp_path)
    names = [s["name"] for s in runsview.run_info(tmp_path, "demo")["stages"]]
    assert names == ["sft", "reward", "dpo", "ppo", "eval"]
    assert runsview.run_info(tmp_path, "demo")["figures"] == ["loss.png"]
