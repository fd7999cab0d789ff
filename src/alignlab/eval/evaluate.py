"""Evaluate a run from already generated, already scored responses; write ``<run>/eval/eval.json``.

Generation is not done here: the caller (the pipeline's eval stage) samples each policy on the
same held-out prompts, scores the responses with the gold reward (and the proxy RM if any) and
passes the rows. One row::

    {"prompt": str | [{role, content}...],   the same prompt value for every policy (the pairing key)
     "response": str,
     "gold": float,                          gold reward; computed with gold_fn where missing
     "score": float | None,                  proxy (reward-model) score, optional
     "length": int | None,                   response tokens, optional (else words are counted)
     "logprobs": [float] | None,             per-token log π(y_t), optional: gives the KL
     "ref_logprobs": [float] | None,         per-token log π_ref(y_t), optional
     "judge": float | None,                  the AI judge's P(this ≻ the baseline's response), optional
     "judge_consistent": bool | None,        both orders of that judgement agreed, optional
     "objectives": {name: float} | None}     each objective's value, optional (computed where missing)

Several rows per prompt and policy are allowed: a prompt's gold is their mean, and its win
outcome the mean over all (policy response, baseline response) pairs.

eval.json schema (version 1); every interval is ``[lo, hi]`` at ``confidence``::

    {
      "schema": 1,
      "created": "YYYY-MM-DDTHH:MM:SS",
      "baseline": "sft",                    the policy every other is compared with
      "confidence": 0.95, "seed": 0, "tie_tol": 0.0, "kl_estimator": "k3",
      "policies": {
        "<name>": {
          "n_samples": int, "n_prompts": int, "n_missing_gold": int,
          "gold":  {mean, std, se, n, t_interval, bootstrap_interval},     per-response gold
          "proxy": {same} | null,                                            per-response proxy score
          "length": {"mean_words": float, "mean_tokens": float | null},
          "kl": {"k1": {mean, se, n}, "k3": {mean, se, n}} | null,         nats per response
          "win_rate": null for the baseline, else                            vs the baseline, on gold
                {win_rate, wins, ties, losses, n, tie_rate, wilson, bootstrap},
          "proxy_win_rate": {same} | null,                                   vs the baseline, on the proxy
          "judge": null, or {pairs, mean_prob, pair_outcomes: {wins, ties, losses},     the AI judge vs the
                   win_rate: {same as win_rate}, position_consistency,                   baseline (see
                   agreement: {agreement, n, gold_ties, wilson} | null},                 alignlab.eval.compare)
          "heldout": null, or {nll: {mean, ..., t_interval}, nll_pooled, perplexity,    alignment tax: NLL
                     n_examples, n_tokens, tax: {paired difference} | null},             per token of references
          "objectives": null, or {"<objective>": {mean: {mean, ...}, gain: {paired difference} | null}},
          "gain": null for the baseline, else                                paired mean gold − baseline
                {mean, std, se, n, t_interval, bootstrap_interval, significant},
          "monitors": {"<monitor>": {name, value, threshold, fired, message}}
        }
      },
      "frontier": {
        "points": [{name, kl, kl_se, gold, gold_interval, n}],   one per policy (kl null without logprobs)
        "checkpoints": [same] | [],                              from the ``checkpoints`` argument
        "best_of_n": {"by_gold": [{n, kl, gold, n_prompts}],     oracle selection
                      "by_proxy": [...] | null,                 selection by the proxy score, gold reported
                      "source": "<policy>" | null}             whose samples (several per prompt) built it
      },
      "overoptimisation": {"bon": {form, alpha, beta, r2, n, peak_kl} | null,
                           "rl":  {same} | null},   fitted on gold gain over the baseline, d = √KL
      "training_monitors": {"<stage>": {"<monitor>": {...}}},   from each stage's metrics.jsonl, plus
                           "checkpoints": {"proxy_gold_gap": {...}} across the checkpoints argument
      "training_kl": {"<stage>": [{step, k1: {mean, se, n}, k3: {...}, score}]},   from rollouts/*.jsonl
      "probes": {"<probe>": {"<policy>": result}} | null,   passed through; results of
                                        alignlab.eval.probes (score_sycophancy, score_harmlessness)
      "rewardbench": {"<scorer>": result} | null            passed through; results of
                                        alignlab.eval.rewardbench.accuracy
      "judge": {model, tie_margin} | null,                  the judge behind policies.*.judge
      "heldout": {source, n_examples} | null,               the alignment tax's reference answers
      "objectives": {"<objective>": gold spec} | null,
      "lm_eval": {tasks, limit, results: {"<policy>": {"<task>": {"<metric>": value}}}} | null,
      "reward_models": {"<reward stage>": {agreement, pairs, gold_ties}} | null   each reward model
                                        (every round's; or the proxy) against gold on these responses
                                        (rm_gold_agreement)
    }

Non-finite numbers are written as null. Next to it, ``<run>/eval/samples.jsonl`` holds the rows without token arrays, each with its
``policy``: the report shows the policies' answers to the same prompts side by side from it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from alignlab import runs
from alignlab.errors import ConfigError, did_you_mean
from alignlab.eval import compare, frontier, monitors, overopt, stats
from alignlab.eval.kl import rollout_kl, rows_kl

EVAL_STAGE = "eval"
EVAL_FILE = "eval.json"
SCHEMA_VERSION = 1
CHECKPOINTS_KEY = "checkpoints"  # training_monitors entry computed across the ``checkpoints`` argument

GoldFn = Callable[[list, list], Sequence[float]]


def prompt_key(prompt) -> str:
    """A hashable key for a prompt value (text, or a list of messages)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def last_user_message(prompt) -> str:
    """The text a gold function is given for a prompt: the prompt itself when it is text, else the
    content of its last user message (the convention of ``runs.ROLLOUT_FIELDS["prompt"]``)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if users:
        return str(users[-1])
    return str(prompt[-1].get("content", "")) if prompt and isinstance(prompt[-1], dict) else str(prompt)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fill_gold(rows: Sequence[dict], gold_fn: GoldFn | None) -> list[dict]:
    """Copies of ``rows`` with ``gold`` computed by ``gold_fn(prompts, responses)`` where missing.

    ``gold_fn`` gets prompt *texts* (:func:`last_user_message`), as :mod:`alignlab.gold`'s functions take.
    """
    rows = [dict(r) for r in rows]
    todo = [i for i, r in enumerate(rows) if r.get("gold") is None]
    if todo and gold_fn is not None:
        prompts = [last_user_message(rows[i]["prompt"]) for i in todo]
        values = list(gold_fn(prompts, [rows[i]["response"] for i in todo]))
        if len(values) != len(todo):
            raise ValueError(f"gold_fn returned {len(values)} scores for {len(todo)} responses")
        for i, v in zip(todo, values):
            rows[i]["gold"] = float(v)
    return rows


def fill_objectives(rows: Sequence[dict], objectives: dict[str, str | GoldFn]) -> list[dict]:
    """Copies of ``rows`` whose ``objectives`` hold a value for every objective: a missing one is
    computed by the objective's gold spec (:func:`alignlab.gold.get_gold`) or function."""
    rows = [dict(r, objectives=dict(r.get("objectives") or {})) for r in rows]
    for name, fn in objectives.items():
        todo = [i for i, r in enumerate(rows) if r["objectives"].get(name) is None]
        if not todo:
            continue
        if isinstance(fn, str):
            from alignlab.eval.objectives import load_objectives

            fn = load_objectives({name: fn})[name]
        prompts = [last_user_message(rows[i]["prompt"]) for i in todo]
        values = list(fn(prompts, [rows[i]["response"] for i in todo]))
        if len(values) != len(todo):
            raise ValueError(f"objective '{name}' returned {len(values)} scores for {len(todo)} responses")
        for i, v in zip(todo, values):
            rows[i]["objectives"][name] = float(v)
    return rows


def _by_prompt(rows: Sequence[dict], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in rows:
        if _finite(r.get(key)):
            out.setdefault(prompt_key(r["prompt"]), []).append(float(r[key]))
    return out


def _win_outcomes(policy: dict[str, list[float]], base: dict[str, list[float]], tie_tol: float) -> list[float]:
    """Per shared prompt: the mean outcome over all (policy, baseline) response pairs."""
    out = []
    for key in sorted(policy.keys() & base.keys()):  # sorted: the bootstrap must not depend on hashing
        a = np.repeat(policy[key], len(base[key]))
        b = np.tile(base[key], len(policy[key]))
        out.append(float(stats.compare(a, b, tie_tol=tie_tol).mean()))
    return out


def _policy_summary(rows: list[dict], *, confidence: float, n_boot: int, seed: int) -> dict:
    gold = [float(r["gold"]) for r in rows if _finite(r.get("gold"))]
    proxy = [float(r["score"]) for r in rows if _finite(r.get("score"))]
    tokens = [float(r["length"]) for r in rows if _finite(r.get("length"))]
    return {
        "n_samples": len(rows),
        "n_prompts": len({prompt_key(r["prompt"]) for r in rows}),
        "n_missing_gold": len(rows) - len(gold),
        "gold": stats.mean_interval(gold, confidence=confidence, n_boot=n_boot, seed=seed),
        "proxy": stats.mean_interval(proxy, confidence=confidence, n_boot=n_boot, seed=seed) if proxy else None,
        "length": {
            "mean_words": float(np.mean([monitors.response_length(r["response"]) for r in rows])) if rows else None,
            "mean_tokens": float(np.mean(tokens)) if tokens else None,
        },
        "kl": rows_kl(rows),
    }


def _best_of_n(policies: dict[str, list[dict]], baseline: str, bon_source: str | None) -> dict:
    """The empirical best-of-n curves from the first policy (baseline first) with ≥ 2 samples per prompt."""
    order = [bon_source] if bon_source else [baseline, *[p for p in policies if p != baseline]]
    for name in order:
        rows = policies.get(name) or []
        groups: dict[str, list[dict]] = {}
        for r in rows:
            if _finite(r.get("gold")):
                groups.setdefault(prompt_key(r["prompt"]), []).append(r)
        if not groups or min(len(g) for g in groups.values()) < 2:
            continue
        gold = [[float(r["gold"]) for r in g] for g in groups.values()]
        has_proxy = all(_finite(r.get("score")) for g in groups.values() for r in g)
        by_proxy = None
        if has_proxy:
            proxy = [[float(r["score"]) for r in g] for g in groups.values()]
            by_proxy = frontier.best_of_n_gold(gold, by_per_prompt=proxy)
        return {"by_gold": frontier.best_of_n_gold(gold), "by_proxy": by_proxy, "source": name}
    return {"by_gold": [], "by_proxy": None, "source": None}


def _fits(bon: dict, points: list[dict], base_gold: float | None) -> dict:
    curve = bon["by_proxy"] or bon["by_gold"]
    bon_fit = None
    if curve:
        g0 = curve[0]["gold"]
        bon_fit = overopt.fit_bon([p["kl"] for p in curve], [p["gold"] - g0 for p in curve])
    rl_fit = None
    usable = [p for p in points if p["kl"] is not None and p["gold"] is not None]
    if usable and base_gold is not None:
        rl_fit = overopt.fit_rl([p["kl"] for p in usable], [p["gold"] - base_gold for p in usable])
    return {"bon": bon_fit, "rl": rl_fit}


def _token_lengths(rows: Sequence[dict]) -> list[float] | None:
    """The rows' ``length`` (tokens) when every row has one, else None (words are counted)."""
    if rows and all(_finite(r.get("length")) for r in rows):
        return [float(r["length"]) for r in rows]
    return None


def json_safe(value):
    """``value`` with every non-finite float replaced by None (eval.json stays valid JSON for browsers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def _checkpoint_monitors(ckpts: dict[str, list[dict]]) -> dict[str, dict]:
    """The proxy–gold gap across checkpoints in training order (mean proxy vs mean gold per checkpoint)."""
    proxy, gold = [], []
    for rows in ckpts.values():
        p = [float(r["score"]) for r in rows if _finite(r.get("score"))]
        g = [float(r["gold"]) for r in rows if _finite(r.get("gold"))]
        if p and g:
            proxy.append(float(np.mean(p)))
            gold.append(float(np.mean(g)))
    gap = monitors.proxy_gold_gap(proxy, gold)
    return {"proxy_gold_gap": gap} if gap is not None else {}


def _training_kl(run: Path) -> dict[str, list[dict]]:
    out = {}
    for stage in runs.list_stages(run):
        found = rollout_kl(run / stage)
        if found:
            out[stage] = found
    return out


def _training_monitors(run: Path) -> dict[str, dict]:
    out = {}
    for stage in runs.list_stages(run):
        if stage == EVAL_STAGE:
            continue
        rows = [r for r in runs.StageFolder(run / stage).read_metrics() if r.get("split", "train") == "train"]
        found = monitors.training_monitors(rows)
        if found:
            out[stage] = found
    return out


def evaluate_run(
    run_path: str | Path,
    *,
    policies: dict[str, Sequence[dict]],
    gold_fn: GoldFn | None = None,
    baseline: str = "sft",
    checkpoints: dict[str, Sequence[dict]] | None = None,
    bon_source: str | None = None,
    probes: dict | None = None,
    rewardbench: dict | None = None,
    judge: str | None = None,
    judge_tie_margin: float = 0.0,
    heldout: dict[str, Sequence[dict]] | None = None,
    heldout_source: str | None = None,
    objectives: dict[str, str | GoldFn] | None = None,
    lm_eval: dict | None = None,
    reward_models: dict | None = None,
    tie_tol: float = 0.0,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    kl_estimator: str = "k3",
    write: bool = True,
) -> dict:
    """Compute the evaluation summary (schema in the module docstring) and write it to
    ``<run>/eval/eval.json`` (atomically, through :mod:`alignlab.runs`) unless ``write`` is False.

    ``policies`` maps a name (``sft``, ``ppo``, ``dpo``, ``bon-16``...) to its scored rows;
    ``baseline`` must be one of them. ``gold_fn(prompts, responses) -> scores`` fills ``gold``
    where a row lacks it (any callable; the gold registry's functions fit). ``checkpoints``
    (name → rows, in training order) adds frontier points for intermediate checkpoints and is what
    the RL over-optimisation form is fitted on (else the non-baseline policies are). The best-of-n
    curve comes from ``bon_source``'s rows, by default the first policy, baseline first, that has
    at least two samples of every prompt.

    ``judge`` names the AI judge whose judgements the rows carry (``judge``, see
    :mod:`alignlab.eval.compare`), ``judge_tie_margin`` its tie band. ``heldout`` maps each policy
    to its per-example NLL rows ``{"nll", "tokens"}`` on the same reference answers
    (``heldout_source``). ``objectives`` maps names to gold specs (or functions) whose values fill
    each row's ``objectives`` where missing. ``lm_eval`` (lm-evaluation-harness results) is passed
    through.
    """
    if baseline not in policies:
        raise ConfigError(
            f"eval baseline '{baseline}' is not among the policies{did_you_mean(baseline, policies)} "
            f"(policies: {', '.join(policies) or 'none'}); pass baseline= one of them"
        )
    run = Path(run_path)
    scored = {name: fill_gold(rows, gold_fn) for name, rows in policies.items()}
    objectives = dict(objectives or {})
    if objectives:
        scored = {name: fill_objectives(rows, objectives) for name, rows in scored.items()}
    ckpts = {name: fill_gold(rows, gold_fn) for name, rows in (checkpoints or {}).items()}

    base_rows = scored[baseline]
    base_gold = _by_prompt(base_rows, "gold")
    base_proxy = _by_prompt(base_rows, "score")
    kw = {"confidence": confidence, "n_boot": n_boot, "seed": seed}
    held = compare.heldout_summary(heldout, baseline, **kw) if heldout else {}
    base_texts = [r["response"] for r in base_rows]
    base_lengths = _token_lengths(base_rows)
    out_policies = {}
    for name, rows in scored.items():
        summary = _policy_summary(rows, confidence=confidence, n_boot=n_boot, seed=seed)
        if name == baseline:
            summary["win_rate"], summary["gain"], summary["proxy_win_rate"], summary["judge"] = None, None, None, None
        else:
            pol_gold = _by_prompt(rows, "gold")
            summary["win_rate"] = stats.win_rate(
                _win_outcomes(pol_gold, base_gold, tie_tol), confidence=confidence, n_boot=n_boot, seed=seed
            )
            summary["gain"] = compare.paired_gain(pol_gold, base_gold, **kw)
            pol_proxy = _by_prompt(rows, "score")
            summary["proxy_win_rate"] = (
                stats.win_rate(_win_outcomes(pol_proxy, base_proxy, tie_tol), **kw)
                if pol_proxy and base_proxy
                else None
            )
            summary["judge"] = compare.judge_summary(rows, base_rows, margin=judge_tie_margin, tie_tol=tie_tol, **kw)
        summary["heldout"] = held.get(name)
        summary["objectives"] = (
            compare.objectives_summary(rows, None if name == baseline else base_rows, list(objectives), **kw)
            if objectives
            else None
        )
        groups: dict[str, list[str]] = {}
        for r in rows:
            groups.setdefault(prompt_key(r["prompt"]), []).append(r["response"])
        summary["monitors"] = monitors.sample_monitors(
            [r["response"] for r in rows],
            baseline=None if name == baseline else base_texts,
            groups=list(groups.values()),
            lengths=_token_lengths(rows),
            baseline_lengths=base_lengths,
        )
        out_policies[name] = summary

    points = frontier.checkpoint_points(scored, estimator=kl_estimator, confidence=confidence, seed=seed)
    ckpt_points = frontier.checkpoint_points(ckpts, estimator=kl_estimator, confidence=confidence, seed=seed)
    bon = _best_of_n(scored, baseline, bon_source)
    base_mean = out_policies[baseline]["gold"]["mean"]
    fit_points = ckpt_points or [p for p in points if p["name"] != baseline]

    result = {
        "schema": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "baseline": baseline,
        "confidence": confidence,
        "seed": seed,
        "tie_tol": tie_tol,
        "kl_estimator": kl_estimator,
        "policies": out_policies,
        "frontier": {"points": points, "checkpoints": ckpt_points, "best_of_n": bon},
        "overoptimisation": _fits(bon, fit_points, base_mean),
        "training_monitors": {
            **(_training_monitors(run) if run.is_dir() else {}),
            **({CHECKPOINTS_KEY: found} if (found := _checkpoint_monitors(ckpts)) else {}),
        },
        "training_kl": _training_kl(run) if run.is_dir() else {},
        "probes": probes,
        "rewardbench": rewardbench,
        **({"reward_models": reward_models} if reward_models is not None else {}),
        "judge": {"model": judge, "tie_margin": judge_tie_margin} if judge else None,
        "heldout": {"source": heldout_source, "n_examples": len(next(iter(heldout.values())))} if heldout else None,
        "objectives": {k: v if isinstance(v, str) else getattr(v, "__name__", repr(v)) for k, v in objectives.items()}
        or None,
        "lm_eval": lm_eval,
    }
    result = json_safe(result)
    if write:
        folder = runs.StageFolder(run / EVAL_STAGE)
        runs.atomic_write_json(folder.path / EVAL_FILE, result)
        folder.write_samples(
            [
                {"policy": name, **{k: v for k, v in r.items() if k not in ("logprobs", "ref_logprobs")}}
                for name, rows in scored.items()
                for r in rows
            ]
        )
    return result


def rm_gold_agreement(rows: Sequence[dict], scores: Sequence[float]) -> dict:
    """How often a reward model's ``scores`` order two responses to the same prompt as ``gold`` does.

    Over every pair (i, j) of rows with the same prompt: 1 when sign(s_i − s_j) = sign(g_i − g_j),
    ½ when s_i = s_j, 0 otherwise; pairs with equal gold are left out (counted in ``gold_ties``).
    ``agreement`` is the mean per pair (None without a pair).
    """
    groups: dict[str, list[tuple[float, float]]] = {}
    for r, s in zip(rows, scores):
        if _finite(r.get("gold")) and _finite(s):
            groups.setdefault(prompt_key(r["prompt"]), []).append((float(r["gold"]), float(s)))
    outcomes, ties = [], 0
    for group in groups.values():
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                (ga, sa), (gb, sb) = group[a], group[b]
                if ga == gb:
                    ties += 1
                else:
                    outcomes.append(0.5 if sa == sb else float((sa > sb) == (ga > gb)))
    return {"agreement": float(np.mean(outcomes)) if outcomes else None, "pairs": len(outcomes), "gold_ties": ties}


def read_eval(run_path: str | Path) -> dict | None:
    """``<run>/eval/eval.json``, or None where the run has not been evaluated."""
    return runs.read_json(Path(run_path) / EVAL_STAGE / EVAL_FILE)
