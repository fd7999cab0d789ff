"""Figures of the report, drawn from the report's summary (never from trainers or models).

matplotlib is an optional extra (``pip install alignlab[report]``) and is imported only inside
these functions, through its object-oriented API (``Figure`` + the Agg canvas): no pyplot, no
global backend change, safe in a server thread.

Each ``*_figure(summary)`` returns a Figure or None when the summary lacks its data;
:func:`render_figure` turns a Figure into PNG bytes (and optionally a file), and
:func:`save_figures` writes every available figure of a run to ``<run>/report/<name>.png``.
"""

from __future__ import annotations

from pathlib import Path

from alignlab import runs

# Metric keys plotted per stage, in this order, when a stage's metrics.jsonl has them.
PLOT_KEYS = (
    "loss",
    "nll",
    "rewards/accuracy",
    "rewards/margin",
    "score",
    "gold",
    "reward",
    "kl",
    "beta",
    "entropy",
    "value/loss",
    "policy/clipfrac",
    "response_length",
)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _panels(keys: list, panel_height: float):
    """A figure with one panel per key, three to a row: (fig, [(key, axes), ...])."""
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig = _figure(4.0 * cols, panel_height * rows)
    return fig, [(key, fig.add_subplot(rows, cols, i + 1)) for i, key in enumerate(keys)]


def render_figure(fig, path: str | Path | None = None) -> bytes:
    """PNG bytes of ``fig`` (no metadata, so the bytes carry no links); written to ``path`` too if given."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = buf.getvalue()
    if path is not None:
        runs.atomic_write_bytes(path, data)
    return data


def stage_figure(stage: dict):
    """One panel per plotted metric of a stage summary entry; train and eval splits as two lines."""
    metrics = stage.get("metrics") or {}
    keys = [k for k in PLOT_KEYS if any(k in (metrics.get(split) or {}) for split in metrics)]
    if not keys:
        return None
    fig, panels = _panels(keys, 2.8)
    for key, ax in panels:
        for split, style in (("train", "-"), ("eval", "o-")):
            series = (metrics.get(split) or {}).get(key)
            if not series:
                continue
            pts = [(s, v) for s, v in zip(series["steps"], series["values"]) if v is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=split, markersize=3, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(f"{stage['name']}: training curves", fontsize=11)
    return fig


def frontier_figure(ev: dict | None):
    """Gold reward against KL to the reference: best-of-n curves, policies and checkpoints."""
    if not ev:
        return None
    fr = ev.get("frontier") or {}
    bon = fr.get("best_of_n") or {}
    points = [p for p in fr.get("points") or [] if p.get("kl") is not None and p.get("gold") is not None]
    ckpts = [p for p in fr.get("checkpoints") or [] if p.get("kl") is not None and p.get("gold") is not None]
    if not (bon.get("by_gold") or points or ckpts):
        return None
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    if bon.get("by_gold"):
        c = bon["by_gold"]
        ax.plot([p["kl"] for p in c], [p["gold"] for p in c], "--", color="grey", label="best-of-n (oracle)")
    if bon.get("by_proxy"):
        c = bon["by_proxy"]
        ax.plot([p["kl"] for p in c], [p["gold"] for p in c], "-", color="black", label="best-of-n (proxy)")
    if ckpts:
        ax.plot(
            [p["kl"] for p in ckpts], [p["gold"] for p in ckpts], ".-", color="tab:blue", alpha=0.6, label="checkpoints"
        )
    for p in points:
        lo, hi = p.get("gold_interval") or (p["gold"], p["gold"])
        ax.errorbar(
            [p["kl"]], [p["gold"]], yerr=[[p["gold"] - lo], [hi - p["gold"]]], fmt="o", capsize=3, label=p["name"]
        )
    ax.set_xlabel(f"KL(π‖π_ref), nats ({ev.get('kl_estimator', 'k3')})")
    ax.set_ylabel("gold reward")
    ax.set_title("KL–gold frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def overopt_figure(ev: dict | None):
    """Gold gain against d = √KL with the fitted Gao et al. forms."""
    if not ev:
        return None
    import numpy as np

    from alignlab.eval.overopt import predict

    fits = ev.get("overoptimisation") or {}
    fr = ev.get("frontier") or {}
    bon = fr.get("best_of_n") or {}
    curve = bon.get("by_proxy") or bon.get("by_gold") or []
    base = (ev.get("policies") or {}).get(ev.get("baseline"), {}).get("gold", {}).get("mean")
    rl_pts = [p for p in (fr.get("checkpoints") or []) if p.get("kl") is not None and p.get("gold") is not None]
    if not rl_pts:
        rl_pts = [
            p
            for p in fr.get("points") or []
            if p.get("name") != ev.get("baseline") and p.get("kl") is not None and p.get("gold") is not None
        ]
    if not (fits.get("bon") or fits.get("rl")):
        return None
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    kl_max = max([p["kl"] for p in curve] + [p["kl"] for p in rl_pts] + [1e-6])
    grid = np.linspace(0.0, kl_max * 1.2, 200)
    if fits.get("bon") and curve:
        g0 = curve[0]["gold"]
        ax.plot(
            [p["kl"] ** 0.5 for p in curve],
            [p["gold"] - g0 for p in curve],
            "s",
            color="black",
            markersize=3,
            label="best-of-n",
        )
        f = fits["bon"]
        ax.plot(
            grid**0.5,
            predict("bon", grid, f["alpha"], f["beta"]),
            "-",
            color="black",
            label=f"fit d(α−βd), R²={f['r2']:.2f}",
        )
    if fits.get("rl") and rl_pts and base is not None:
        ax.plot(
            [max(p["kl"], 0) ** 0.5 for p in rl_pts],
            [p["gold"] - base for p in rl_pts],
            "o",
            color="tab:blue",
            label="policy",
        )
        f = fits["rl"]
        ax.plot(
            grid**0.5,
            predict("rl", grid, f["alpha"], f["beta"]),
            "-",
            color="tab:blue",
            label=f"fit d(α−β log d), R²={f['r2']:.2f}",
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("d = √KL")
    ax.set_ylabel("gold gain over the initial policy")
    ax.set_title("Over-optimisation (Gao et al. 2022 forms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def objectives_figure(ev: dict | None):
    """Each objective's mean per policy (bars with t intervals, one panel per objective) and, with two
    or more objectives, the policies on the first two (the trade-off between them)."""
    if not ev or not ev.get("objectives"):
        return None
    names = list(ev["objectives"])
    pols = [(n, p["objectives"]) for n, p in (ev.get("policies") or {}).items() if p.get("objectives")]
    if not pols:
        return None

    def mean_ci(objs, o):
        m = (objs.get(o) or {}).get("mean") or {}
        lo, hi = m.get("t_interval") or (m.get("mean"), m.get("mean"))
        return m.get("mean"), lo, hi

    panels = len(names) + (1 if len(names) >= 2 else 0)
    cols = min(4, panels)
    rows = (panels + cols - 1) // cols
    fig = _figure(3.4 * cols, 3.0 * rows)
    labels = [n for n, _ in pols]
    for k, o in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        vals = [mean_ci(objs, o) for _, objs in pols]
        x = list(range(len(pols)))
        means = [v[0] if v[0] is not None else 0.0 for v in vals]
        err = [
            [max(m - (v[1] if v[1] is not None else m), 0) for m, v in zip(means, vals)],
            [max((v[2] if v[2] is not None else m) - m, 0) for m, v in zip(means, vals)],
        ]
        ax.bar(x, means, yerr=err, capsize=3, color="tab:blue", alpha=0.7)
        ax.set_xticks(x, labels, rotation=30, fontsize=8)
        ax.set_title(o, fontsize=10)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    if len(names) >= 2:
        ax = fig.add_subplot(rows, cols, len(names) + 1)
        a, b = names[0], names[1]
        for name, objs in pols:
            (xa, xlo, xhi), (yb, ylo, yhi) = mean_ci(objs, a), mean_ci(objs, b)
            if xa is None or yb is None:
                continue
            ax.errorbar(
                [xa], [yb], xerr=[[xa - xlo], [xhi - xa]], yerr=[[yb - ylo], [yhi - yb]], fmt="o", capsize=3, label=name
            )
        ax.set_xlabel(a, fontsize=9)
        ax.set_ylabel(b, fontsize=9)
        ax.set_title(f"trade-off: {a} vs {b}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Objectives per policy (mean, t interval)", fontsize=11)
    return fig


def monitor_figure(stage: dict):
    """The RL monitors along training (``monitor/*`` of a stage's metrics, alignlab.trainers.monitoring), one panel each."""
    train = (stage.get("metrics") or {}).get("train") or {}
    keys = sorted(k for k in train if k.startswith("monitor/"))
    if not keys:
        return None
    fig, panels = _panels(keys, 2.4)
    for key, ax in panels:
        pts = [(s, v) for s, v in zip(train[key]["steps"], train[key]["values"]) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="tab:red", linewidth=1.2)
        ax.set_title(key.removeprefix("monitor/"), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{stage['name']}: monitors (thresholds: the stage's monitors.* settings)", fontsize=11)
    return fig


def all_figures(summary: dict) -> dict[str, object]:
    """``{name: Figure}`` for every figure the summary has data for (empty without matplotlib)."""
    if not have_matplotlib():
        return {}
    out = {}
    for stage in summary.get("stages") or []:
        fig = stage_figure(stage)
        if fig is not None:
            out[f"curves-{stage['name']}"] = fig
        fig = monitor_figure(stage)
        if fig is not None:
            out[f"monitors-{stage['name']}"] = fig
    for name, fn in (
        ("frontier", frontier_figure),
        ("overoptimisation", overopt_figure),
        ("objectives", objectives_figure),
    ):
        fig = fn(summary.get("eval"))
        if fig is not None:
            out[name] = fig
    return out


def save_figures(run_path: str | Path) -> list[Path]:
    """Write each figure of the run to ``<run>/report/<name>.png`` (for a README); returns the paths."""
    from alignlab.report.build import REPORT_DIR, collect

    run = Path(run_path)
    paths = []
    for name, fig in all_figures(collect(run)).items():
        path = run / REPORT_DIR / f"{name}.png"
        render_figure(fig, path)
        paths.append(path)
    return paths
