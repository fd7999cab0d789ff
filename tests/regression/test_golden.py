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
    """Compare with the stored curve. A missing golden file fails (never written silently);
    ALIGNLAB_UPDATE_GOLDEN=1 writes it."""
    path = GOLDEN / f"{name}.json"
    if os.environ.get("ALIGNLAB_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(values, indent=1) + "\n")
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: write it with ALIGNLAB_UPDATE_GOLDEN=1 and commit it")
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


def test_dpo_tiny_curve(tiny_dpo_config):
    from alignlab.trainers.dpo import train_dpo
    from alignlab.trainers.run import read_metrics

    summary = train_dpo(tiny_dpo_config(**{"train.max_steps": 6}))
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    check_curve("dpo_tiny", [r["loss"] for r in rows] + [rows[-1]["rewards/margin"]])


def test_ppo_tiny_curve(tmp_path):
    import torch

    from alignlab.config import PPOConfig, load_config
    from alignlab.profiles import load_profile
    from alignlab.trainers.ppo import train_ppo
    from alignlab.trainers.run import read_metrics

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order on every machine of this kind
    try:
        over = [
            f"train.output_dir={tmp_path}",
            "train.max_steps=4",
            "train.progress=false",
            "train.num_samples=0",
            "data.eval_fraction=0",
        ]
        summary = train_ppo(load_config(PPOConfig, None, over, base=load_profile("tiny")["ppo"]))
    finally:
        torch.set_num_threads(n)
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    check_curve("ppo_tiny", [v for r in rows for v in (r["score"], r["kl"], r["loss"])])


def test_a_missing_golden_file_fails(monkeypatch, tmp_path):
    monkeypatch.setitem(globals(), "GOLDEN", tmp_path)
    monkeypatch.delenv("ALIGNLAB_UPDATE_GOLDEN", raising=False)
    with pytest.raises(pytest.fail.Exception, match="missing"):
        check_curve("nope", [1.0])
    assert not (tmp_path / "nope.json").exists()  # nothing written: the next run fails too
