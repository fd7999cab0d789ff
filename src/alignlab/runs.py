"""The run-folder contract: what a run writes, where, and in which shape. Torch-free.

Every writer (the stages) and every reader (evaluation, the report, the web app, tests) goes
through this module, so the layout is written down once::

    <output_dir>/<run_name>/                one run: one pipeline execution
        run.json                            the manifest: profile, stage order, versions, created
        <stage>/                            one folder per stage (sft, reward, dpo, ppo, eval, ...)
            config.yaml                     the stage's full config
            log.txt                         what happened (data counts, truncations, warnings, faults)
            metrics.jsonl                   one JSON object per logged step: {"step", "split", <metric>...}
            checkpoints/step-XXXXXXXX/      resumable checkpoints (trainers.checkpoint)
            final/                          the trained model in Hugging Face format
            samples.jsonl                   responses sampled after training (SAMPLE_FIELDS)
            rollouts/step-XXXXXXXX.jsonl    RL stages: the rollout of a step, token by token (ROLLOUT_FIELDS)
            COMPLETE                        written last (atomically): the summary, with "consumed"

Iterated RLHF (a profile's ``rounds: N``) keeps this layout: round r ≥ 2 of a stage is the sibling
folder ``<stage>@<r>`` (``label@2``, ``reward@2``, ``ppo@2``, ...), written by a stage config whose
run name is ``<run>@<r>`` (:func:`split_round`); round 1 is the plain ``<stage>``.

A stage folder is *complete* when ``COMPLETE`` exists; *interrupted* when it holds progress but no
marker; *absent* otherwise. ``COMPLETE`` records, under ``consumed``, the upstream folders the
stage read (``{"model": "runs/x/sft/final", ...}``), so a reader can draw the pipeline's graph
from files alone.

Metric names (:data:`METRICS`) are the keys of ``metrics.jsonl`` rows; one name means one thing
in every stage (see the glossary in ``docs`` of :mod:`alignlab.pipeline`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = "COMPLETE"
MANIFEST = "run.json"
CONFIG = "config.yaml"
LOG = "log.txt"
METRICS_FILE = "metrics.jsonl"
SAMPLES = "samples.jsonl"
CHECKPOINTS = "checkpoints"
FINAL = "final"
ROLLOUTS = "rollouts"

# One row of samples.jsonl: the same shape in every stage.
SAMPLE_FIELDS = {
    "prompt": "the conversation: a list of {role, content} ending with the user's message",
    "response": "the sampled response text",
    "finished": "true when the response ended with EOS (false: cut at the length limit)",
    "length": "response tokens",
    "score": "the stage's reward source's score, or null where the stage has none",
    "reference": "the data set's reference answer, or null",
}

# One row of rollouts/step-XXXXXXXX.jsonl (RL stages): a sampled response, token by token.
ROLLOUT_FIELDS = {
    "step": "the optimizer step (rollout) this response was sampled for",
    "prompt": "the prompt text (last user message)",
    "response": "the response text",
    "tokens": "the response's tokens as text pieces, one per generated token",
    "logprobs": "log π_old(y_t) per token (the policy that sampled it)",
    "ref_logprobs": "log π_ref(y_t) per token",
    "kl": "the per-token KL estimate used by the stage (log π_old − log π_ref for k1)",
    "advantages": "per-token advantages (PPO), or the response's advantage repeated (RLOO/GRPO)",
    "score": "the reward source's score of the response",
    "reward": "the score after the KL penalty and any normalisation, per response",
}

# Metric names: one name per concept, in every stage's metrics.jsonl.
METRICS = {
    "loss": "the stage's training loss (its own mean: per token or per sequence, see the loss)",
    "lr": "learning rate at the step",
    "grad_norm": "global gradient norm before clipping",
    "tokens_per_s": "tokens processed per second since the start of the process",
    "nll": "held-out negative log-likelihood per response token (SFT)",
    "rewards/chosen": "mean reward of chosen responses (reward model: score; DPO family: β·log π/π_ref)",
    "rewards/rejected": "mean reward of rejected responses",
    "rewards/margin": "mean of chosen minus rejected reward",
    "rewards/accuracy": "fraction of pairs whose chosen reward is higher (a tie counts 1/2)",
    "logps/chosen": "mean policy seq_logps of chosen responses",
    "logps/rejected": "mean policy seq_logps of rejected responses",
    "logratio/mean": "mean of log π_θ − log π_ref over the offline responses (DPO family; not a KL)",
    "score": "mean reward-source score of the rollout's responses (before the KL penalty)",
    "reward": "mean per-response reward after the KL penalty",
    "kl": "mean per-response KL to π_ref, summed over tokens (the stage's estimator)",
    "beta": "β, the KL weight, at the step",
    "entropy": "mean per-token entropy of π over the rollout's response tokens",
    "response_length": "mean response length in tokens",
    "value/loss": "value-function loss (PPO)",
    "policy/clipfrac": "fraction of tokens whose ratio was clipped",
    "policy/approx_kl": "k3 estimate of KL(π_old‖π_θ) between sampling and update",
    "gen_limit_frac": "RL stages: sampling tokens/s over the compute limit (matmul FLOP/s / 2N per token)",
    "gold": "RL stages with `gold:` set: mean gold reward of the rollout's responses (next to the proxy `score`)",
    "rm/disagreement": "a reward-model ensemble's mean spread (std over heads) on the rollout's responses",
    # RL stages' monitors on each rollout (alignlab.trainers.monitoring; the thresholds are the `monitors` knobs)
    "monitor/length_drift": "mean response tokens / the mean of the first rollouts' (monitors.baseline_steps)",
    "monitor/repetition": "mean share of repeated word 3-grams within a response (1 − distinct-3)",
    "monitor/diversity": "mean pairwise Jaccard similarity of the responses to one prompt (k = 1: of all responses)",
    "monitor/entropy_collapse": "the rollout's entropy / the mean of the first rollouts'",
    "monitor/proxy_gold_gap": "share of gold's range given back since its peak over the steps so far (score still rose)",
    "monitor/disagreement": "rm/disagreement / the mean of the first rollouts'",
}


# ----------------------------------------------------------------------------- atomic writes
def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (before renaming a finished folder into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never a part:
    a temporary file beside it, fsync, rename over the target, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def replace_dir(target: str | Path, fill) -> Path:
    """Build a folder through ``fill(tmp_path)`` and rename it over ``target`` once it is on disk."""
    target = Path(target)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    fill(tmp)
    fsync_tree(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return target


# ----------------------------------------------------------------------------- reading JSON lines
def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file; a last line cut by a crash is skipped, a missing file reads empty."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_json(path: str | Path) -> dict | None:
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------- one stage folder
@dataclass(frozen=True)
class StageFolder:
    """The paths of one stage folder (nothing is created by looking)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.path / FINAL

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def rollouts(self) -> Path:
        return self.path / ROLLOUTS

    def is_complete(self) -> bool:
        return self.marker.is_file()

    def has_progress(self) -> bool:
        """True once the stage wrote anything worth keeping (metrics, checkpoints, outputs)."""
        return (
            self.is_complete()
            or (self.metrics.is_file() and self.metrics.stat().st_size > 0)
            or (self.checkpoints.is_dir() and any(self.checkpoints.iterdir()))
        )

    def state(self) -> str:
        """``complete``, ``interrupted`` (progress but no marker) or ``absent``.

        A stage that is training right now reads ``interrupted`` too: the files cannot tell a live
        process from a dead one; the web app adds "live" when metrics.jsonl changed recently.
        """
        if self.is_complete():
            return "complete"
        if self.path.is_dir() and self.has_progress():
            return "interrupted"
        return "absent"

    def summary(self) -> dict | None:
        """The COMPLETE marker's summary, or None when the stage is not complete."""
        return read_json(self.marker)

    def read_metrics(self, split: str | None = None) -> list[dict]:
        rows = read_jsonl(self.metrics)
        return rows if split is None else [r for r in rows if r.get("split") == split]

    def read_samples(self) -> list[dict]:
        return read_jsonl(self.samples)

    def rollout_steps(self) -> list[int]:
        if not self.rollouts.is_dir():
            return []
        steps = []
        for p in self.rollouts.glob("step-*.jsonl"):
            try:
                steps.append(int(p.stem.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(steps)

    def rollout_path(self, step: int) -> Path:
        return self.rollouts / f"step-{step:08d}.jsonl"

    def read_rollout(self, step: int) -> list[dict]:
        return read_jsonl(self.rollout_path(step))

    def write_complete(self, summary: dict, consumed: dict[str, str] | None = None) -> dict:
        """Write the marker (last, atomically): ``finished`` time, the summary and what was consumed."""
        data = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary}
        if consumed:
            data["consumed"] = {k: str(v) for k, v in consumed.items()}
        atomic_write_json(self.marker, data)
        return data

    def write_samples(self, rows: list[dict]) -> None:
        """Write samples.jsonl in the shared schema; a stage's extra keys follow the schema's."""
        out = []
        for r in rows:
            base = sample_row(**{k: r[k] for k in SAMPLE_FIELDS if k in r})
            out.append({**base, **{k: v for k, v in r.items() if k not in SAMPLE_FIELDS}})
        atomic_write_jsonl(self.samples, out)


def sample_row(
    prompt: list[dict] | str,
    response: str,
    finished: bool | None = None,
    length: int | None = None,
    score: float | None = None,
    reference: str | None = None,
) -> dict:
    """One row of samples.jsonl in the shared schema (:data:`SAMPLE_FIELDS`)."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {
        "prompt": prompt,
        "response": response,
        "finished": finished,
        "length": length,
        "score": None if score is None else float(score),
        "reference": reference,
    }


# ----------------------------------------------------------------------------- a run
def run_path(output_dir: str | Path, run_name: str) -> Path:
    """The run's folder; a round's run name ``<run>@<r>`` names the folder of ``<run>`` (its rounds live there)."""
    from alignlab.errors import ConfigError

    if not run_name or "/" in run_name or "\\" in run_name or run_name in (".", ".."):
        raise ConfigError(f"'train.run_name' must be a plain folder name, got {run_name!r}")
    return Path(output_dir) / split_round(run_name)[0]


def stage_folder(output_dir: str | Path, run_name: str, stage: str) -> StageFolder:
    """``<output_dir>/<run>/<stage>``; for the run name ``<run>@<r>`` (round r), ``<output_dir>/<run>/<stage>@<r>``."""
    return StageFolder(run_path(output_dir, run_name) / round_name(stage, split_round(run_name)[1]))


# ----------------------------------------------------------------------------- rounds (iterated RLHF)
def round_name(name: str, r: int) -> str:
    """``name`` (a stage or a run name) in round ``r``: itself in round 1, ``name@r`` in a later round."""
    return name if r == 1 else f"{name}@{r}"


def split_round(name: str) -> tuple[str, int]:
    """``"ppo@2"`` -> ``("ppo", 2)``; a name without a round suffix ``@<r>`` (r ≥ 2, no leading zero) is round 1."""
    base, sep, tail = name.rpartition("@")
    if sep and base and tail.isdigit() and tail[0] != "0" and int(tail) >= 2:
        return base, int(tail)
    return name, 1


def planned_rounds(path: str | Path) -> int | None:
    """The rounds the run's manifest plans (1 when it names none); None for a run without a manifest.

    Folders of later rounds than this are left over from an earlier plan with more rounds: eval and
    report read only the planned ones."""
    manifest = read_manifest(path)
    return None if manifest is None else int(manifest.get("rounds") or 1)


def run_rounds(path: str | Path) -> int:
    """How many rounds the run has: the manifest's ``rounds``, or the highest ``<stage>@<r>`` folder (1: none)."""
    manifest = read_manifest(path) or {}
    found = [split_round(s)[1] for s in list_stages(path)]
    return max([int(manifest.get("rounds") or 1), *found])


def versions() -> dict[str, str]:
    """Versions that decide what a run computes (written into the manifest)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("alignlab", "torch", "transformers", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(path: str | Path, *, profile: str, stages: list[str], extra: dict | None = None) -> dict:
    """Write (or update) ``run.json``: the profile, the stage order, versions; ``created`` is kept."""
    path = Path(path)
    old = read_manifest(path) or {}
    data = {
        "profile": profile,
        "stages": list(stages),
        "versions": versions(),
        "created": old.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    atomic_write_json(path / MANIFEST, data)
    return data


def read_manifest(path: str | Path) -> dict | None:
    return read_json(Path(path) / MANIFEST)


def list_stages(path: str | Path) -> list[str]:
    """The run's stages: the manifest's order (started or not), then any other stage folder by name."""
    path = Path(path)
    manifest = read_manifest(path) or {}
    order = list(manifest.get("stages", []))
    present = (
        sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []
    )
    return order + [s for s in present if s not in order]


def is_run(path: Path) -> bool:
    if (path / MANIFEST).is_file():
        return True
    return path.is_dir() and any((p / CONFIG).is_file() for p in path.iterdir() if p.is_dir())


def list_runs(root: str | Path) -> list[Path]:
    """Run folders directly under ``root`` (those with a manifest or at least one stage folder)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run(p))
