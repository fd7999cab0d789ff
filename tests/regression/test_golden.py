"""Seeded loss curves compared with stored golden values.

A change that moves these numbers changed the maths (or the data order, the init, the
tokenisation...). If the change is intended, regenerate with ALIGNLAB_UPDATE_GOLDEN=1 and say why
in the commit.
"""
import json
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
TOL = 1e-4


def check_curve(name: str, values: list[float]) -> None:
    path = GOLDEN / f"{name}.json"
    if os.environ.get("ALIGNLAB_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(json.dumps(values, indent=1) + "\n")
        if os.environ.get("CI") and not os.environ.get("ALIGNLAB_UPDATE_GOLDEN"):
            pytest.fail(f"{path} was missing; it is now written: commit it")
        return
    golden = json.loads(path.read_text())
    assert len(golden) == len(values)
    worst = max(abs(a - b) for a, b in zip(golden, values))
    assert worst < TOL, f"{name}: curve moved by {worst:.2e} (golden {golden}, now {values})"


def test_sft_tiny_curve(tiny_sft_config):
    from alignlab.trainers.run import read_metrics
    from alignlab.trainers.sft import train_sft

    summary = train_sft(tiny_sft_config(**{"train.max_steps": 6}))
    losses = [r["loss"] for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    check_curve("sft_tiny", losses + [summary["eval_nll"]])
