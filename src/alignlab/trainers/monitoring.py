"""Reward-hacking and collapse monitors while an RL stage trains: the cheap checks of
:mod:`alignlab.eval.monitors`, run on every rollout instead of once after training.

Per rollout (B responses, k per prompt), logged as ``monitor/<name>`` in metrics.jsonl:

================  ======================================================  ==========================
monitor           value on this rollout                                     fires (``monitors.<name>``)
================  ======================================================  ==========================
length_drift      mean response tokens / mean of the first rollouts'       > t or < 1/t
repetition        mean repeated word-3-gram rate within a response          > t
diversity         mean pairwise similarity of a prompt's k responses       > t
                  (k = 1: of all the rollout's responses)
entropy_collapse  ``entropy`` / mean of the first rollouts'                 < t
proxy_gold_gap    share of gold's range given back since its peak, over     > t while ``score`` rose
                  the (score, gold) series so far, each a trailing mean
                  over baseline_steps rollouts (with ``gold:`` set; from
                  4 × baseline_steps rollouts on: early RL is noisy)
disagreement      ``rm/disagreement`` / mean of the first rollouts'         > t
================  ======================================================  ==========================

"The first rollouts" are the first ``monitors.baseline_steps``; the monitors that compare with
them start after those. Each monitor warns once, the first time it fires (a WARNING in the stage's
log.txt and on the terminal naming the monitor, value, threshold and step). The state (the
start's means, the score/gold series, which monitors fired) is saved in every checkpoint, so a
resumed run logs the same numbers and does not warn twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from alignlab.eval import monitors as M

PREFIX = "monitor/"
NAMES = ("length_drift", "repetition", "diversity", "entropy_collapse", "proxy_gold_gap", "disagreement")
_START_KEYS = ("response_length", "entropy", "rm/disagreement")  # stats whose first rollouts are the start


class TrainingMonitors:
    """One RL stage's monitors: :meth:`measure` each rollout, :meth:`warn` once its step is known.

    ``cfg`` is a :class:`~alignlab.config.sections.MonitorConfig`; ``gold_fn(prompts, responses)``
    (a gold reward, optional) gives the ``gold`` stat and feeds ``proxy_gold_gap``.
    """

    def __init__(self, cfg, *, gold_fn=None):
        self.cfg = cfg
        self.gold_fn = gold_fn
        self.start: dict[str, list[float]] = {k: [] for k in _START_KEYS}  # per-rollout means of the first rollouts
        self.proxy: list[float] = []  # per-rollout mean score, every rollout so far
        self.gold: list[float] = []  # per-rollout mean gold, matched with proxy
        self.fired: dict[str, int] = {}  # monitor -> step it first fired at
        self.last: dict[str, dict] = {}  # the last measured rollout's results, until warn() reads them

    # ----------------------------------------------------------------- per rollout
    def measure(self, prompts: Sequence[str], responses: Sequence[str], *, k: int, stats: dict) -> dict:
        """``gold`` and ``monitor/*`` stats of one rollout (rows ``[prompt0 × k, ...]``).

        ``stats`` holds the rollout's own stats so far (``score``, ``response_length``,
        ``entropy``, maybe ``rm/disagreement``); the monitors read them, never change them.
        """
        out: dict = {}
        if self.gold_fn is not None:
            gold = [float(g) for g in self.gold_fn(list(prompts), list(responses))]
            out["gold"] = float(np.mean(gold)) if gold else float("nan")
        if not self.cfg.enabled:
            return out
        results = self._results(responses, k=k, stats={**stats, **out})
        out.update({PREFIX + name: r["value"] for name, r in results.items() if r["value"] is not None})
        self.last = results
        return out

    def _results(self, responses: Sequence[str], *, k: int, stats: dict) -> dict[str, dict]:
        c = self.cfg
        res: dict[str, dict | None] = {"repetition": M.repetition(responses, threshold=c.repetition)}
        groups = [list(responses[i : i + k]) for i in range(0, len(responses), k)] if k > 1 else [list(responses)]
        res["diversity"] = M.diversity(groups, threshold=c.diversity)
        if "gold" in stats and "score" in stats:
            self.proxy.append(float(stats["score"]))
            self.gold.append(float(stats["gold"]))
        started = len(self.start["response_length"]) >= c.baseline_steps
        if not started:  # still inside the start: collect its means
            for key in _START_KEYS:
                if _finite(stats.get(key)):
                    self.start[key].append(float(stats[key]))
        else:
            res["length_drift"] = self._vs_start(
                "response_length",
                stats,
                lambda early, now: M.length_drift(
                    [], [], lengths=[now], baseline_lengths=[early], threshold=c.length_drift
                ),
            )
            res["entropy_collapse"] = self._vs_start(
                "entropy", stats, lambda early, now: M.entropy_change(early, now, threshold=c.entropy_collapse)
            )
            res["disagreement"] = self._vs_start(
                "rm/disagreement", stats, lambda early, now: M.disagreement_change(early, now, threshold=c.disagreement)
            )
            if len(self.gold) >= 4 * c.baseline_steps:  # a peak and a fall need more points than the start
                w = c.baseline_steps  # one rollout's gold is noisy: trailing means over w rollouts
                res["proxy_gold_gap"] = M.proxy_gold_gap(
                    _trailing_mean(self.proxy, w), _trailing_mean(self.gold, w), threshold=c.proxy_gold_gap
                )
        return {name: r for name, r in res.items() if r is not None}

    def _vs_start(self, key: str, stats: dict, test) -> dict | None:
        if not self.start[key] or not _finite(stats.get(key)):
            return None
        return test(float(np.mean(self.start[key])), float(stats[key]))

    def warn(self, step: int, log, *, stage: str | None = None) -> None:
        """One WARNING per monitor, the first time it fires (``step``: the optimizer step of the last
        :meth:`measure`), to ``log`` (the stage's log.txt) and, when ``stage`` is given, to the
        terminal too (stderr, above the progress bar)."""
        for name, r in self.last.items():
            if r["fired"] and name not in self.fired:
                self.fired[name] = step
                value = r["value"] if r["value"] is not None else float("nan")
                msg = f"monitor {name} fired at step {step}: value {value:.4g} crossed the threshold {r['threshold']:.4g} ({r['message']})"
                log.warning(msg)
                if stage is not None:
                    from tqdm.auto import tqdm

                    tqdm.write(f"alignlab: {stage}: WARNING {msg}", file=sys.stderr)
        self.last = {}

    # ----------------------------------------------------------------- checkpoints (extra state)
    def state_dict(self) -> dict:
        return {
            "start": {k: list(v) for k, v in self.start.items()},
            "proxy": list(self.proxy),
            "gold": list(self.gold),
            "fired": dict(self.fired),
        }

    def load_state_dict(self, state: dict) -> None:
        self.start = {k: [float(x) for x in state["start"].get(k, [])] for k in _START_KEYS}
        self.proxy = [float(x) for x in state["proxy"]]
        self.gold = [float(x) for x in state["gold"]]
        self.fired = {str(k): int(v) for k, v in state["fired"].items()}


def _trailing_mean(x: Sequence[float], w: int) -> list[float]:
    """Point i is the mean of x[max(0, i−w+1) .. i]."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=np.float64))])
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(0, i - w)
    return ((c[i] - c[lo]) / (i - lo)).tolist()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def build_monitors(cfg) -> TrainingMonitors:
    """The monitors of an RL stage config (its ``monitors`` section and ``gold`` spec)."""
    gold_fn = None
    if getattr(cfg, "gold", None):
        from alignlab.gold import get_gold

        gold_fn = get_gold(cfg.gold)
    return TrainingMonitors(cfg.monitors, gold_fn=gold_fn)
