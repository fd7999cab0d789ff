"""A stage's run folder, for the writers: open it, refuse to mix two runs, log, metrics, complete.

The layout and the file shapes are :mod:`alignlab.runs` (the contract, torch-free); this module
is what a training stage uses to write them.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

from alignlab import distributed, runs
from alignlab.config import config_diff, flatten, save_config, to_dict
from alignlab.errors import CheckpointError, ConfigError

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
    "train.output_dir",  # where the run folder lives, not what it trains: a moved run resumes
    "train.strategy",  # checkpoints hold full weights and optimizer state whatever the strategy
    # the training monitors' thresholds only decide when a warning is written, never what is trained
    *(
        f"monitors.{name}"
        for name in ("length_drift", "repetition", "diversity", "entropy_collapse", "proxy_gold_gap", "disagreement")
    ),
)


def stage_cost(started: float | None, counts: dict | None = None) -> dict:
    """Wall time of this process's run of the stage, and peak memory so far: the process's peak RSS
    (over every stage it ran before, too) and, on a GPU, torch's peak allocation. With ``counts``
    (:func:`alignlab.models.flops.since` the stage began), the token positions its models
    processed (``forward_tokens`` without gradient, ``trained_tokens`` with) and the estimated
    FLOPs (``flops``). Like the wall time, a resumed stage counts only what ran after the resume."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)}
    if started is not None:
        out["wall_s"] = round(time.perf_counter() - started, 2)
    if counts is not None:
        out.update(counts)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class RunDir:
    """One stage's folder (a :class:`~alignlab.runs.StageFolder`) opened for writing."""

    def __init__(self, root: str | Path, run_name: str, stage: str):
        self.folder = runs.stage_folder(root, run_name, stage)
        self.path = self.folder.path
        self.stage = stage
        self.ckpt_dir = self.folder.checkpoints
        self.final_dir = self.folder.final
        self.metrics_path = self.folder.metrics
        self.consumed: dict[str, str] = {}  # upstream paths this stage read (recorded in COMPLETE)
        self.log = logging.getLogger(f"alignlab.{stage}.{id(self)}")

    # ----------------------------------------------------------------- lifecycle
    def is_complete(self) -> bool:
        return self.folder.is_complete()

    def has_progress(self) -> bool:
        return self.folder.has_progress()

    def prepare(self, cfg, *, resume: bool) -> None:
        """Create the folder and write config.yaml; on resume, refuse a different config."""
        saved = self.folder.config
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
        self.started = time.perf_counter()
        from alignlab.models import flops

        self.counts_at_start = flops.snapshot()
        distributed.barrier()  # every process has checked the folder before rank 0 writes into it
        if distributed.is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            self.folder.marker.unlink(missing_ok=True)
            save_config(cfg, saved)
        distributed.barrier()
        self._attach_log_file()

    def _attach_log_file(self) -> None:
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
        if not distributed.is_main():  # rank 0 logs for every process (they run the same steps)
            self.log.addHandler(logging.NullHandler())
            return
        handler = logging.FileHandler(self.folder.log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(handler)

    def close(self) -> None:
        for h in list(self.log.handlers):
            h.close()
            self.log.removeHandler(h)

    def _counts(self) -> dict | None:
        """Tokens and FLOPs of every process since :meth:`prepare` (None before it)."""
        start = getattr(self, "counts_at_start", None)
        if start is None:
            return None
        from alignlab.models import flops

        counts = flops.since(start)
        if distributed.world_size() > 1:
            keys = sorted(counts)
            counts = dict(zip(keys, distributed.all_reduce_sum([float(counts[k]) for k in keys])))
        out = {k: int(v) for k, v in counts.items() if k != "flops"}
        out["flops"] = float(f"{counts['flops']:.4g}")
        return out

    def complete(self, summary: dict) -> dict:
        """Write the COMPLETE marker (last, with what the stage consumed and its cost); return the summary with paths added."""
        summary = {
            **summary,
            "cost": {**stage_cost(getattr(self, "started", None), self._counts()), **summary.get("cost", {})},
        }
        if distributed.world_size() > 1:
            summary["cost"]["processes"] = distributed.world_size()
        if distributed.is_main():
            self.folder.write_complete(summary, self.consumed)
        distributed.barrier()
        out = dict(summary, run_dir=str(self.path))
        if self.final_dir.exists():
            out["final"] = str(self.final_dir)
        return out

    # ----------------------------------------------------------------- outputs
    def write_samples(self, rows: list[dict]) -> None:
        if distributed.is_main():
            self.folder.write_samples(rows)

    def replace_final(self, save_fn) -> Path:
        """Write the final model through a temporary folder and rename it into place (rank 0 only)."""
        if distributed.is_main():
            runs.replace_dir(self.final_dir, save_fn)
        distributed.barrier()
        return self.final_dir


@contextmanager
def open_stage(cfg, stage: str):
    """Validate ``cfg`` and open the stage's folder (refusing to mix runs); its log closes at the end.

    The stage's declared inputs (the pipeline table) are recorded as ``consumed`` in COMPLETE.
    """
    from alignlab.config import validate
    from alignlab.pipeline import get_stage, location

    validate(cfg)
    distributed.setup(stage)  # several processes (torchrun): join the group; refuse a stage that cannot
    output_dir, run_name = location(cfg)
    run = RunDir(output_dir, run_name, stage)
    holder = getattr(cfg, "train", None)
    if holder is None and run.path.exists() and distributed.is_main():
        import shutil

        shutil.rmtree(run.path)  # an inference stage (eval, report, label) has no checkpoints: it starts afresh
    run.prepare(cfg, resume=bool(getattr(holder, "resume", False)))
    flat = flatten(to_dict(cfg))
    run.consumed = {k: flat[inp.key] for k, inp in get_stage(stage).inputs.items() if flat.get(inp.key) is not None}
    try:
        yield run
    finally:
        run.close()


class MetricsLog:
    """Append-only JSONL metrics (flushed per line), optionally mirrored to TensorBoard."""

    def __init__(self, path: Path, *, resume_step: int | None = None, tensorboard: bool = False):
        self.path = path
        if resume_step is not None and path.is_file():
            # keep the rows up to the checkpoint (a line cut by a crash is dropped by read_jsonl)
            runs.atomic_write_jsonl(path, [r for r in runs.read_jsonl(path) if r.get("step", 0) <= resume_step])
        elif resume_step is None and path.exists():
            path.unlink()
        self._fh = open(path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(
                    "train.tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from e
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
    """All metric rows of a stage folder (kept for callers of the old name; see alignlab.runs)."""
    return runs.StageFolder(Path(stage_dir)).read_metrics()
