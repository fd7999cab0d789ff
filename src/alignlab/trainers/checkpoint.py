"""Atomic checkpoints: everything needed to continue a run exactly, or nothing at all.

Layout of one checkpoint (``<stage>/checkpoints/step-00000040/``)::

    model/               Hugging Face format, safetensors (a LoRA run saves only its adapter)
    optimizer.pt         optimizer state        (tensors only: loads with weights_only=True)
    scheduler.pt         LR scheduler state
    rng.pt               torch CPU (and CUDA) RNG states
    extra.pt             stage state (e.g. the adaptive KL controller)
    state.json           step, data position, python RNG, metrics at save time
    COMPLETE             written last

Writing happens in ``.tmp-step-…``; every file is fsynced, then the folder is renamed into place
and the parent folder fsynced. A crash at any moment leaves either the previous checkpoints
untouched, or a ``.tmp-`` folder that is ignored and removed at the next start. Older checkpoints
are deleted only after a newer one is complete (``keep_last``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from alignlab import runs
from alignlab.errors import CheckpointError

MARKER = runs.MARKER  # the same marker file as a stage folder's: written last, means "complete"
fsync_dir, fsync_tree = runs.fsync_dir, runs.fsync_tree


def rng_state() -> dict:
    state = {"torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_py_random_state(state: list) -> None:
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def list_complete(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_complete(ckpt_dir: Path) -> Path | None:
    done = list_complete(ckpt_dir)
    return done[-1] if done else None


def clean_partial(ckpt_dir: Path) -> list[Path]:
    """Remove half-written checkpoints left by a crash; returns what was removed."""
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(".tmp-") or (p.is_dir() and p.name.startswith("step-") and not (p / MARKER).is_file()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    save_model: Callable[[Path], None],
    optimizer=None,
    scheduler=None,
    extra: dict | None = None,
    state: dict | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and prune old ones. Raises CheckpointError on I/O failure."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_name(step)
    if (final / MARKER).is_file():  # this step is already saved: never delete a good checkpoint to rewrite it
        return final
    tmp = ckpt_dir / f".tmp-{step_name(step)}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_model(tmp / "model")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        torch.save(extra or {}, tmp / "extra.pt")
        meta = dict(state or {})
        meta["step"] = step
        meta["python_random"] = _py_random_state()
        with open(tmp / "state.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, default=str)
        (tmp / MARKER).write_text(f"{step}\n", encoding="utf-8")
        fsync_tree(tmp)
        if final.exists():  # an incomplete folder of this step (no marker): not a checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_complete(ckpt_dir)
        keep = f"; the last good checkpoint is kept: {last}" if last else ""
        raise CheckpointError(
            f"{final}: could not write the checkpoint ({e.strerror or e}){keep}. Free disk space and resume."
        ) from None
    for old in list_complete(ckpt_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_pt(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"{path}: cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def read_extra(folder: Path) -> dict:
    """A checkpoint's stage state (``extra.pt``), name -> state dict; {} when it has none."""
    return _load_pt(folder / "extra.pt") if (folder / "extra.pt").is_file() else {}


def load_checkpoint(
    folder: Path, *, load_model: Callable[[Path], None], optimizer=None, scheduler=None
) -> tuple[dict, dict]:
    """Restore model, optimizer, scheduler and RNG from ``folder``; returns (state, extra)."""
    if not (folder / MARKER).is_file():
        raise CheckpointError(f"{folder}: not a complete checkpoint (no {MARKER} marker)")
    load_model(folder / "model")
    if optimizer is not None and (folder / "optimizer.pt").is_file():
        optimizer.load_state_dict(_load_pt(folder / "optimizer.pt"))
    if scheduler is not None and (folder / "scheduler.pt").is_file():
        scheduler.load_state_dict(_load_pt(folder / "scheduler.pt"))
    set_rng_state(_load_pt(folder / "rng.pt"))
    extra = read_extra(folder)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    _set_py_random_state(state.pop("python_random"))
    return state, extra
