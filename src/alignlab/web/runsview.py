"""What the web app reads from run folders, by id: runs, stages, metrics, rollouts, figures. Torch-free.

Every name that comes from a request (a run, a stage, a figure, a rollout step) is looked up in what
:mod:`alignlab.runs` lists on disk; nothing the request says is ever joined into a path. An unknown
name raises :class:`NotFound`, which the app turns into a 404 page.
"""

from __future__ import annotations

import time
from pathlib import Path

from alignlab import runs

LIVE_SECONDS = 30.0
"""A stage is shown as live while its metrics.jsonl changed less than this many seconds ago."""

# Metric keys charted per stage, in order; any other numeric key found in the rows is charted after these.
CHART_KEYS = [
    "loss",
    "nll",
    "rewards/accuracy",
    "rewards/margin",
    "rewards/chosen",
    "rewards/rejected",
    "score",
    "reward",
    "kl",
    "beta",
    "value/loss",
    "policy/clipfrac",
    "policy/approx_kl",
    "entropy",
    "response_length",
    "logratio/mean",
]
SKIP_KEYS = {
    "step",
    "split",
    "time",
    "epoch",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed",
    "wall",
    "tokens",
    "pairs",
    "samples",
    "examples",
}
"""Bookkeeping keys (counts, speeds, the schedule) left off the charts."""

# What each stage does, with its formula, shown beside the stage on the dashboard.
EXPLAIN = {
    "sft": (
        "Supervised fine-tuning: next-token cross-entropy on the demonstrations' response tokens.",
        "L = −(1/|y|) Σ_t log π_θ(y_t | x, y_<t)",
    ),
    "reward": (
        "Reward model: a scalar head on the SFT model trained so chosen responses score above rejected (Bradley–Terry).",
        "L = −log σ(r(x, y_w) − r(x, y_l))",
    ),
    "rm": (
        "Reward model: a scalar head trained so chosen responses score above rejected (Bradley–Terry).",
        "L = −log σ(r(x, y_w) − r(x, y_l))",
    ),
    "ppo": (
        (
            "PPO: sample from the policy, score with the reward, subtract a per-token KL penalty to π_ref, "
            "and take clipped policy-gradient steps on GAE advantages; a value head learns the returns."
        ),
        "max E[min(ρ_t A_t, clip(ρ_t, 1±ε) A_t)],  ρ_t = π_θ/π_old,  r = score − β·Σ_t (log π_old − log π_ref)",
    ),
    "rloo": (
        "RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt, KL penalty to π_ref.",
        "A_i = r_i − (1/(k−1)) Σ_{j≠i} r_j",
    ),
    "grpo": (
        "GRPO: group-normalised advantages over k samples per prompt, clipped ratio, KL to π_ref.",
        "A_i = (r_i − mean(r)) / std(r)",
    ),
    "dpo": (
        (
            "DPO: the KL-regularised RLHF optimum in closed form; a logistic loss on the implicit reward margin, "
            "no sampling, no reward model."
        ),
        "L = −log σ(β[log π_θ(y_w)/π_ref(y_w) − log π_θ(y_l)/π_ref(y_l)])",
    ),
    "ipo": (
        "IPO: a squared loss pulling the log-ratio margin to 1/(2β).",
        "L = (h − 1/(2β))²",
    ),
    "kto": (
        "KTO: a prospect-theory loss on unpaired desirable/undesirable responses.",
        "L = 1 − σ(β(log π_θ/π_ref − z_ref)) for desirable",
    ),
    "simpo": (
        "SimPO: length-normalised log-probability margin, no reference model.",
        "L = −log σ(β/|y_w| log π(y_w) − β/|y_l| log π(y_l) − γ)",
    ),
    "best-of-n": (
        (
            "Best-of-n: sample n responses from the policy and keep the one the reward scores highest (no training); "
            "its KL to the policy is known in closed form."
        ),
        "y* = argmax_i r(x, y_i),  KL = log n − (n−1)/n",
    ),
    "best_of_n": (
        "Best-of-n: sample n responses, keep the one the reward scores highest.",
        "y* = argmax_i r(x, y_i)",
    ),
    "eval": (
        "Evaluation: win rate, reward, and KL to π_ref of each trained policy.",
        "KL = E_π[log π − log π_ref]",
    ),
}


class NotFound(LookupError):
    """A run, stage, step or file id that is not on disk."""


def run_ids(root: Path) -> list[str]:
    return [p.name for p in runs.list_runs(root)]


def run_folder(root: Path, run: str) -> Path:
    """The folder of run ``run``, matched by name against :func:`alignlab.runs.list_runs`."""
    for p in runs.list_runs(root):
        if p.name == run:
            return p
    raise NotFound(f"no run named {run!r}")


NOT_STAGES = ("report",)
"""Folders of a run that are no stage (the report's output), unless the manifest names them."""


def stages_of(path: Path) -> list[str]:
    """The run's stages (:func:`alignlab.runs.list_stages`) without folders that are clearly not stages."""
    listed = (runs.read_manifest(path) or {}).get("stages", [])
    return [s for s in runs.list_stages(path) if s in listed or s not in NOT_STAGES]


def stage_folder(root: Path, run: str, stage: str) -> runs.StageFolder:
    path = run_folder(root, run)
    for name in stages_of(path):
        if name == stage:
            return runs.StageFolder(path / name)
    raise NotFound(f"run {run!r} has no stage {stage!r}")


def stage_info(sf: runs.StageFolder, now: float | None = None) -> dict:
    """State, liveness, the chartable keys, rollout steps and the explanation of one stage."""
    now = time.time() if now is None else now
    state = sf.state()
    live = False
    if sf.metrics.is_file() and state != "complete":
        live = now - sf.metrics.stat().st_mtime < LIVE_SECONDS
    about, formula = EXPLAIN.get(runs.split_round(sf.name)[0], ("", ""))  # ppo@2 (round 2) is explained as ppo
    return {
        "name": sf.name,
        "state": state,
        "live": live,
        "rollout_steps": sf.rollout_steps(),
        "has_samples": sf.samples.is_file(),
        "has_final": sf.final.is_dir(),
        "about": about,
        "formula": formula,
    }


def run_info(root: Path, run: str) -> dict:
    path = run_folder(root, run)
    manifest = runs.read_manifest(path) or {}
    stages = [stage_info(runs.StageFolder(path / s)) for s in stages_of(path)]
    return {
        "id": path.name,
        "profile": manifest.get("profile"),
        "created": manifest.get("created"),
        "stages": stages,
        "figures": figures(root, run),
        "live": any(s["live"] for s in stages),
    }


def chart_keys(rows: list[dict]) -> list[str]:
    """The metric keys worth a chart: the known ones in order, then any other numeric key."""
    seen: set[str] = set()
    for r in rows:
        for k, v in r.items():
            if k not in SKIP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                seen.add(k)
    return [k for k in CHART_KEYS if k in seen] + sorted(seen - set(CHART_KEYS))


MAX_POINTS = 2000
"""Points per chart series sent to the page; longer series are thinned evenly (the last point kept)."""


def thin(xs: list, ys: list, limit: int = MAX_POINTS) -> tuple[list, list]:
    if len(xs) <= limit:
        return xs, ys
    stride = -(-len(xs) // limit)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def series(rows: list[dict]) -> dict:
    """``{key: {split: [[step...], [value...]]}}`` for every chartable key (rows without a step are skipped)."""
    out: dict[str, dict[str, list[list[float]]]] = {}
    keys = chart_keys(rows)
    for r in rows:
        step = r.get("step")
        if not isinstance(step, (int, float)):
            continue
        split = str(r.get("split") or "train")
        for k in keys:
            v = r.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                xs, ys = out.setdefault(k, {}).setdefault(split, [[], []])
                xs.append(step)
                ys.append(v)
    for per_split in out.values():
        for split, (xs, ys) in per_split.items():
            per_split[split] = list(thin(xs, ys))
    return out


def metrics(root: Path, run: str) -> dict:
    """Every stage's chart series and state: what the dashboard polls."""
    path = run_folder(root, run)
    out = {}
    for s in stages_of(path):
        sf = runs.StageFolder(path / s)
        info = stage_info(sf)
        out[s] = {
            "state": info["state"],
            "live": info["live"],
            "series": series(sf.read_metrics()),
        }
    return {"run": path.name, "stages": out}


def config_text(sf: runs.StageFolder, limit: int = 200_000) -> str | None:
    if not sf.config.is_file():
        return None
    return sf.config.read_text(encoding="utf-8", errors="replace")[:limit]


def figures(root: Path, run: str) -> list[str]:
    """Names of ``<run>/report/*.png``."""
    report = run_folder(root, run) / "report"
    if not report.is_dir():
        return []
    return sorted(p.name for p in report.glob("*.png") if p.is_file())


def figure_path(root: Path, run: str, name: str) -> Path:
    if name not in figures(root, run):
        raise NotFound(f"run {run!r} has no figure {name!r}")
    return run_folder(root, run) / "report" / name


def rollout(root: Path, run: str, stage: str, step: int) -> dict:
    sf = stage_folder(root, run, stage)
    steps = sf.rollout_steps()
    if step not in steps:
        raise NotFound(f"stage {stage!r} of run {run!r} has no rollout at step {step}")
    rows = []
    for r in sf.read_rollout(step):
        rows.append({k: r.get(k) for k in runs.ROLLOUT_FIELDS})
    return {"run": run, "stage": stage, "step": step, "steps": steps, "rows": rows}


def rl_stages(root: Path, run: str) -> list[str]:
    path = run_folder(root, run)
    return [s for s in stages_of(path) if runs.StageFolder(path / s).rollout_steps()]


def _num(v) -> float | None:
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def eval_points(root: Path, run: str) -> list[dict]:
    """Trained policies' and checkpoints' ``{name, kl, reward}`` from ``<run>/eval/eval.json``.

    Reads the evaluation's schema 1 (``frontier.points`` and ``frontier.checkpoints``: ``{name, kl,
    gold}``; else ``policies.<name>.gold.mean`` with ``kl.<kl_estimator>.mean``), and leniently a
    plain ``{name: {"kl", "reward"}}``. Points without a KL (no log-probs logged) are left out.
    """
    data = runs.read_json(run_folder(root, run) / "eval" / "eval.json")
    if not isinstance(data, dict):
        return []
    out: list[dict] = []
    frontier = data.get("frontier") if isinstance(data.get("frontier"), dict) else {}
    for group in ("points", "checkpoints"):
        for p in frontier.get(group) or []:
            if isinstance(p, dict):
                kl, reward = _num(p.get("kl")), _num(p.get("gold", p.get("reward")))
                if kl is not None and reward is not None:
                    out.append({"name": str(p.get("name", "?")), "kl": kl, "reward": reward})
    if out:
        return out
    policies = data.get("policies", data)
    if not isinstance(policies, dict):
        return []
    estimator = data.get("kl_estimator", "k3")
    for name, d in policies.items():
        if not isinstance(d, dict):
            continue
        kl = d.get("kl")
        if isinstance(kl, dict) and ("k1" in kl or "k3" in kl):
            kl = kl.get(estimator) or kl.get("k3") or kl.get("k1")
        kl = _num(kl)
        reward = next((_num(d[k]) for k in ("gold", "reward", "score") if _num(d.get(k)) is not None), None)
        if kl is not None and reward is not None:
            out.append({"name": str(name), "kl": kl, "reward": reward})
    return out


def prompts_of(root: Path, run: str, limit: int = 50) -> list[str]:
    """Prompts seen in the run's samples and rollouts (the simulator's suggestions), first seen first."""
    path = run_folder(root, run)
    seen: dict[str, None] = {}
    for s in stages_of(path):
        sf = runs.StageFolder(path / s)
        for row in sf.read_samples():
            p = row.get("prompt")
            if isinstance(p, list) and p:
                users = [m.get("content", "") for m in p if isinstance(m, dict) and m.get("role") == "user"]
                p = users[-1] if users else ""
            if isinstance(p, str) and p:
                seen.setdefault(p, None)
        for step in sf.rollout_steps()[:1]:
            for row in sf.read_rollout(step):
                if isinstance(row.get("prompt"), str) and row["prompt"]:
                    seen.setdefault(row["prompt"], None)
        if len(seen) >= limit:
            break
    return list(seen)[:limit]


def label_items(root: Path, run: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(prompt, [(stage, response), ...])]``: each prompt with every stage's sampled response to it
    (from samples.jsonl), for prompts answered by at least two stages — the material of labelling tasks."""
    path = run_folder(root, run)
    by_prompt: dict[str, list[tuple[str, str]]] = {}
    for s in stages_of(path):
        for row in runs.StageFolder(path / s).read_samples():
            p, r = row.get("prompt"), row.get("response")
            if isinstance(p, list):
                users = [m.get("content", "") for m in p if isinstance(m, dict) and m.get("role") == "user"]
                p = users[-1] if users else None
            if isinstance(p, str) and p and isinstance(r, str):
                by_prompt.setdefault(p, []).append((s, r))
    return [(p, rs) for p, rs in by_prompt.items() if len(rs) >= 2]
