"""Promises of the reliability issue: crash during save, full disk, numerical faults, safe loading."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignlab.errors import CheckpointError, NumericalError, UnsafeFileError
from alignlab.trainers import checkpoint as ckpt
from alignlab.trainers.loop import fit
from alignlab.trainers.run import RunDir


# ----------------------------------------------------------------------------- a toy stage
def toy_stage(tmp_path, *, bad_after=None, max_bad=3, **train):
    """A linear regression trained through the real loop; `bad_after` makes losses NaN from that call on."""
    from alignlab.config import TrainConfig

    cfg = TrainConfig(
        output_dir=str(tmp_path),
        run_name="toy",
        progress=False,
        max_steps=6,
        batch_size=4,
        warmup_steps=0,
        max_bad_steps=max_bad,
        **train,
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    xs = torch.randn(32, 3)
    ys = xs @ torch.tensor([[1.0], [-2.0], [0.5]])
    items = [(xs[i], ys[i], f"toy.jsonl:{i + 1}") for i in range(32)]
    calls = {"n": 0}

    def make_batch(rows):
        return {
            "x": torch.stack([r[0] for r in rows]),
            "y": torch.stack([r[1] for r in rows]),
            "where": [r[2] for r in rows],
        }

    def step_fn(batch):
        calls["n"] += 1
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean()
        if bad_after is not None and calls["n"] > bad_after:
            loss = loss * float("nan")
        return loss, {}

    def save(folder):
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / "w.pt")

    def load(folder):
        model.load_state_dict(torch.load(folder / "w.pt", weights_only=True))

    run = RunDir(tmp_path, "toy", "toy")
    run.prepare(cfg, resume=cfg.resume)
    return dict(
        cfg=cfg,
        run=run,
        model=model,
        items=items,
        make_batch=make_batch,
        step_fn=step_fn,
        save_model=save,
        load_model=load,
    )


def test_non_finite_steps_are_skipped_logged_and_halt_with_last_good_checkpoint(tmp_path):
    parts = toy_stage(tmp_path, bad_after=2, max_bad=3)
    with pytest.raises(NumericalError, match="3 steps in a row.*toy.jsonl"):
        fit(**parts)
    run = parts["run"]
    latest = ckpt.latest_complete(run.ckpt_dir)
    assert latest is not None and latest.name == ckpt.step_name(5)  # 2 good steps + 3 skipped
    weights = torch.load(latest / "model" / "w.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values())
    log = (run.path / "log.txt").read_text()
    assert log.count("non-finite loss or gradient; step skipped") == 3
    assert "toy.jsonl:" in log


def test_isolated_non_finite_step_does_not_halt(tmp_path):
    parts = toy_stage(tmp_path)
    calls = {"n": 0}
    inner = parts["step_fn"]

    def flaky(batch):
        calls["n"] += 1
        loss, stats = inner(batch)
        return (loss * float("inf") if calls["n"] == 3 else loss), stats

    parts["step_fn"] = flaky
    result = fit(**parts)
    assert result.step == 6 and result.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in parts["model"].parameters())


def test_full_disk_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    parts = toy_stage(tmp_path, save_every=2)
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        if "step-00000004" in str(f):
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"No space left on device.*last good checkpoint is kept.*step-00000002"):
        fit(**parts)
    run = parts["run"]
    assert [p.name for p in ckpt.list_complete(run.ckpt_dir)] == ["step-00000002"]
    assert not [p for p in run.ckpt_dir.iterdir() if p.name.startswith(".tmp-")]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, json
    sys.path.insert(0, {tests!r})
    import torch
    from alignlab.trainers import checkpoint as ckpt
    from pathlib import Path
    from integration.test_reliability import toy_stage
    from alignlab.trainers.loop import fit

    point, nth = sys.argv[1], int(sys.argv[2])
    counter = {{"n": 0}}

    def killer(real):
        def wrapped(*a, **k):
            counter["n"] += 1
            if counter["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        return wrapped

    if point == "torch.save":
        torch.save = killer(torch.save)
    elif point == "os.replace":
        ckpt.os.replace = killer(os.replace)
    elif point == "fsync":
        ckpt.os.fsync = killer(os.fsync)
    elif point == "rmtree":
        ckpt.shutil.rmtree = killer(ckpt.shutil.rmtree)
    parts = toy_stage(Path(sys.argv[3]), save_every=1, keep_last=2, resume=True)
    fit(**parts)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point,nth", [("torch.save", 7), ("torch.save", 9), ("fsync", 12), ("os.replace", 3), ("rmtree", 2)]
)
def test_sigkill_during_save_leaves_a_loadable_checkpoint_and_resume_continues(tmp_path, point, nth):
    tests_dir = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=tests_dir))
    proc = subprocess.run(
        [sys.executable, str(script), point, str(nth), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpt_dir = tmp_path / "toy" / "toy" / "checkpoints"
    complete = ckpt.list_complete(ckpt_dir)
    assert complete, "a checkpoint written before the kill must survive"
    for c in complete:  # every complete checkpoint loads
        assert torch.isfinite(torch.load(c / "model" / "w.pt", weights_only=True)["weight"]).all()
    newest_step = int(complete[-1].name.split("-")[1])
    # resume picks the newest complete checkpoint, removes the partial one, and finishes the run
    parts = toy_stage(tmp_path, save_every=1, keep_last=2, resume=True)
    result = fit(**parts)
    assert result.resumed_from == str(complete[-1]) and newest_step < 6
    assert result.step == 6
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------- safe loading
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/alignlab-pwned",))


def test_pickle_weights_that_would_run_code_are_refused(tmp_path):
    from alignlab.config import ModelConfig, from_dict
    from alignlab.models.load import load_model

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with open(folder / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(UnsafeFileError, match="weights_only=True.*could run code"):
        load_model(from_dict(ModelConfig, {"name_or_path": str(folder)}))
    assert not Path("/tmp/alignlab-pwned").exists()


def test_checkpoint_pickle_that_would_run_code_is_refused(tmp_path):
    parts = toy_stage(tmp_path)
    fit(**parts)
    latest = ckpt.latest_complete(parts["run"].ckpt_dir)
    with open(latest / "optimizer.pt", "wb") as fh:
        pickle.dump(_Evil(), fh)
    parts2 = toy_stage(tmp_path / "again")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ckpt.load_checkpoint(
            latest, load_model=parts2["load_model"], optimizer=torch.optim.AdamW(parts2["model"].parameters())
        )
    assert not Path("/tmp/alignlab-pwned").exists()


def test_missing_model_path_and_uncached_hub_id_give_clear_errors():
    from alignlab.config import ModelConfig, from_dict
    from alignlab.errors import ModelLoadError
    from alignlab.models.load import load_model

    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_model(from_dict(ModelConfig, {"name_or_path": "./no/such/folder"}))
    with pytest.raises(ModelLoadError, match="does not download at run time"):
        load_model(from_dict(ModelConfig, {"name_or_path": "someone/not-cached-model-xyz"}))


def test_run_name_cannot_escape_the_output_folder(tmp_path):
    from alignlab.errors import ConfigError

    for bad in ("../outside", "a/b", "..", ""):
        with pytest.raises(ConfigError, match="run_name"):
            RunDir(tmp_path, bad, "sft")
