"""The run folder: the contract between stages, evaluation, the report and the web app.

``<output_dir>/<run_name>/<stage>/`` holds::

    config.yaml      the stage's full config
    log.txt          what happened (data counts, truncations, warnings, faults)
    metrics.jsonl    one JSON object per logged step ({"step", "split", ...})
    checkpoints/     resumable checkpoints (see trainers.checkpoint)
    final/           the trained model in Hugging Face format
    samples.jsonl    responses sampled after training
    COMPLETE         written last, with a JSON summary: the stage is done

Readers (evaluation, report, web) look at these files only, never at a trainer's internals.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from alignlab.config import config_diff, save_config, to_dict
from alignlab.errors import CheckpointError, ConfigError

STAGE_MARKER = "COMPLETE"

# Keys that may change between a run and its resumption (they do not change the maths).
RESUMABLE_CHANGES = (
    "train.resume",
    "train.progress",
    "train.eval_every",
    "train.eval_batches",
    "train.save_every",
    "train.keep_last",
    "train.log_every",
    "train.tensorboard",
    "train.max_bad_steps",
    "train.num_samples",
    "model.device",
)


class RunDir:
    """One stage's folder; creation refuses to mix two different runs."""

    def __init__(self, root: str | Path, run_name: str, stage: str):
        if not run_name or "/" in run_name or "\\" in run_name or run_name in (".", ".."):
            raise ConfigError(f"'train.run_name' must be a plain folder name, got {run_name!r}")
        self.path = Path(root) / run_name / stage
        self.stage = stage
        self.ckpt_dir = self.path / "checkpoints"
        self.final_dir = self.path / "final"
        self.metrics_path = self.path / "metrics.jsonl"
        self.log = logging.getLogger(f"alignlab.{stage}.{id(self)}")

    # ----------------------------------------------------------------- lifecycle
    def is_complete(self) -> bool:
        return (self.path / STAGE_MARKER).is_file()

    def has_progress(self) -> bool:
        """True once training wrote anything worth keeping (metrics, checkpoints, a final model)."""
        return (
            self.is_complete()
            or (self.metrics_path.is_file() and self.metrics_path.stat().st_size > 0)
            or (self.ckpt_dir.is_dir() and any(self.ckpt_dir.iterdir()))
        )

    def prepare(self, cfg, *, resume: bool) -> None:
        """Create the folder and write config.yaml; on resume, refuse a different config."""
        saved = self.path / "config.yaml"
        if self.has_progress():
            if not resume:
                raise ConfigError(
                    f"{self.path} already holds a run: pass --resume to continue it, or choose another "
                    "train.run_name (or delete the folder) to start afresh"
                )
            if saved.is_file():
                import yaml

                old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
                diff = config_diff(old, to_dict(cfg), ignore=RESUMABLE_CHANGES)
                if diff:
                    raise CheckpointError(
                        f"{saved}: cannot resume: the config differs from the run's in {', '.join(diff[:6])}; "
                        "resume with the same settings, or start a new run_name"
                    )
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / STAGE_MARKER).unlink(missing_ok=True)
        save_config(cfg, saved)
        self._attach_log_file()

    def _attach_log_file(self) -> None:
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
        handler = logging.FileHandler(self.path / "log.txt", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)

    def close(self) -> None:
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)

    def mark_complete(self, summary: dict) -> None:
        from alignlab.trainers.checkpoint import write_json_atomic

        write_json_atomic(self.path / STAGE_MARKER, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary})

    def complete(self, summary: dict) -> dict:
        """Write the COMPLETE marker (last); return the summary with the folder's paths added."""
        self.mark_complete(summary)
        out = dict(summary, run_dir=str(self.path))
        if self.final_dir.exists():
            out["final"] = str(self.final_dir)
        return out

    # ----------------------------------------------------------------- outputs
    def write_samples(self, rows: list[dict]) -> None:
        with open(self.path / "samples.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def replace_final(self, save_fn) -> Path:
        """Write the final model through a temporary folder and rename it into place."""
        tmp = self.path / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        save_fn(tmp)
        from alignlab.trainers.checkpoint import fsync_tree

        fsync_tree(tmp)
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        os.replace(tmp, self.final_dir)
        return self.final_dir


@contextmanager
def open_stage(cfg, stage: str):
    """Validate ``cfg`` and open the stage's folder (refusing to mix runs); its log closes at the end."""
    from alignlab.config import validate

    validate(cfg)
    run = RunDir(cfg.train.output_dir, cfg.train.run_name, stage)
    run.prepare(cfg, resume=cfg.train.resume)
    try:
        yield run
    finally:
        run.close()


class MetricsLog:
    """Append-only JSONL metrics (flushed per line), optionally mirrored to TensorBoard."""

    def __init__(self, path: Path, *, resume_step: int | None = None, tensorboard: bool = False):
        self.path = path
        if resume_step is not None and path.is_file():
            keep = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if row.get("step", 0) <= resume_step:
                    keep.append(line)
            path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
        elif resume_step is None and path.exists():
            path.unlink()
        self._fh = open(path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from e
            self._tb = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, step: int, split: str, stats: dict) -> None:
        row = {"step": step, "split": split}
        for k, v in stats.items():
            row[k] = float(v) if hasattr(v, "item") or isinstance(v, (int, float)) else v
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(stage_dir: str | Path) -> list[dict]:
    """All metric rows of a stage folder (for evaluation, reports and tests)."""
    p = Path(stage_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
