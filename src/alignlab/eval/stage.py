"""The pipeline's eval stage: sample every policy of a run on the same prompts, score, evaluate.

Generation and the log-prob passes happen here (torch, imported inside the functions); the maths
is :func:`alignlab.eval.evaluate.evaluate_run`, which reads and writes only files. For each
policy (a complete stage of the run with a ``final/`` model) it samples ``samples`` responses per
prompt, scores them with the gold reward and the proxy (the run's reward model), and computes the
per-token log-probs of each response under the policy and under the baseline (π_ref), so the KL
estimates are of KL(π‖π_ref) on samples from π. The baseline also gives ``bon_samples``
responses per prompt for the best-of-n curve.
"""

from __future__ import annotations

from pathlib import Path

POLICY_STAGES = ("sft", "dpo", "ppo", "rloo", "grpo")


def policy_folders(run_path: Path, names: list[str]) -> dict[str, Path]:
    """{stage: final/} of the run's complete policy stages (``names``, or all of POLICY_STAGES)."""
    from alignlab.errors import ConfigError
    from alignlab.runs import StageFolder

    out = {}
    for name in names or POLICY_STAGES:
        folder = StageFolder(run_path / name)
        if folder.is_complete() and folder.final.is_dir():
            out[name] = folder.final
        elif names:
            raise ConfigError(f"eval: policy '{name}' has no complete stage with a final model in {run_path}")
    return out


def _load(path: Path, model_cfg, seed: int):
    from alignlab.config import from_dict, to_dict
    from alignlab.config.sections import ModelConfig
    from alignlab.models.load import load_model

    cfg = from_dict(ModelConfig, {**to_dict(model_cfg), "name_or_path": str(path), "lora": {"enabled": False}})
    return load_model(cfg, seed=seed, for_training=False)


def sample_policy(model, tokenizer, records, prompt_ids, *, k: int, rollout, seed: int, ref_model=None) -> list[dict]:
    """k responses per prompt with per-token log-probs under the model and (if given) ``ref_model``."""
    import torch

    from alignlab.data.tokenize import messages_of
    from alignlab.rollout.generate import TransformersEngine
    from alignlab.rollout.passes import response_logprobs
    from alignlab.rollout.sampling import sample_rollout, sampling_params

    engine = TransformersEngine(model, tokenizer, batch_size=rollout.generation_batch_size)
    exp, gens = sample_rollout(engine, tokenizer, prompt_ids, sampling_params(rollout, seed=seed), k=k)
    device = next(model.parameters()).device
    logps, refs = [], []
    with torch.no_grad():
        for s in range(0, len(exp), rollout.forward_batch_size):
            part = exp.select(torch.arange(s, min(s + rollout.forward_batch_size, len(exp))))
            logps.append(
                response_logprobs(model, part, temperature=rollout.temperature, device=device)[0].float().cpu()
            )
            if ref_model is not None and ref_model is not model:  # the baseline is its own π_ref: one pass
                refs.append(
                    response_logprobs(ref_model, part, temperature=rollout.temperature, device=device)[0].float().cpu()
                )
    logp = torch.cat(logps)
    ref = torch.cat(refs) if refs else (logp if ref_model is model else None)
    rows = []
    for i, g in enumerate(gens):
        n = int(exp.response_mask[i].sum())
        rec = records[i // k]
        rows.append(
            {
                "prompt": messages_of(rec.prompt),
                "response": g.text,
                "finished": g.finished,
                "length": len(g.response_ids),
                "logprobs": logp[i, :n].tolist(),
                "ref_logprobs": None if ref is None else ref[i, :n].tolist(),
            }
        )
    return rows


def run_eval(cfg) -> dict:
    """Evaluate the run named by an :class:`~alignlab.config.EvalConfig`; returns the summary."""
    from alignlab.data import load_records
    from alignlab.eval.evaluate import evaluate_run, last_user_message
    from alignlab.gold import get_gold
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.rollout.sampling import tokenize_prompts
    from alignlab.runs import run_path
    from alignlab.trainers.common import seed_everything
    from alignlab.trainers.run import open_stage

    gold_fn = get_gold(cfg.gold)
    proxy = load_reward_source(cfg.proxy, device=cfg.model.device) if cfg.proxy else None
    run = run_path(cfg.output_dir, cfg.run_name)
    folders = policy_folders(run, list(cfg.policies))
    if cfg.baseline not in folders:
        from alignlab.errors import ConfigError

        raise ConfigError(
            f"eval: the baseline '{cfg.baseline}' has no complete stage with a final model in {run} (found: {', '.join(folders) or 'none'})"
        )
    with open_stage(cfg, "eval") as stage:
        seed_everything(cfg.seed)
        stage.consumed = {name: str(path) for name, path in folders.items()}
        if cfg.proxy:
            stage.consumed["proxy"] = cfg.proxy
        records = load_records(cfg.data.train, "prompt", limit=cfg.data.limit).records
        ref = _load(folders[cfg.baseline], cfg.model, cfg.seed)
        ids = tokenize_prompts(records, ref.tokenizer, cfg.data.max_prompt_length, stage.log)
        policies, probes = {}, {}
        probe_jobs = _probe_jobs(cfg)
        for name, path in folders.items():
            stage.log.info("sampling %s (%s)", name, path)
            loaded = ref if name == cfg.baseline else _load(path, cfg.model, cfg.seed)
            # the baseline's extra samples per prompt give the best-of-n curve (evaluate_run's bon_source)
            k = max(cfg.samples, cfg.bon_samples) if name == cfg.baseline else cfg.samples
            rows = sample_policy(
                loaded.model,
                loaded.tokenizer,
                records,
                ids,
                k=k,
                rollout=cfg.rollout,
                seed=cfg.seed,
                ref_model=ref.model,
            )
            prompts = [last_user_message(r["prompt"]) for r in rows]
            responses = [r["response"] for r in rows]
            for r, g in zip(rows, gold_fn(prompts, responses)):
                r["gold"] = float(g)
            if proxy is not None:
                recs = [records[i // k] for i in range(len(rows))]
                scores = proxy.score(
                    [r.prompt for r in recs],
                    responses,
                    finished=[r["finished"] for r in rows],
                    meta=[r.meta for r in recs],
                )
                for r, sc in zip(rows, scores.tolist()):
                    r["score"] = float(sc)
            policies[name] = rows
            for probe, result in (_probe_policy(cfg, loaded, probe_jobs) if probe_jobs else {}).items():
                probes.setdefault(probe, {})[name] = result  # answered while the model is loaded
            del loaded
        probes = probes or None
        bon = cfg.baseline if max(cfg.samples, cfg.bon_samples) >= 2 else None
        result = evaluate_run(
            run, policies=policies, gold_fn=gold_fn, baseline=cfg.baseline, bon_source=bon, probes=probes, seed=cfg.seed
        )
        summary = {"stage": "eval", "policies": list(folders), "prompts": len(records), "baseline": cfg.baseline}
        for name, p in result["policies"].items():
            summary[f"gold/{name}"] = p["gold"]["mean"]
            if p.get("gain"):
                summary[f"gain/{name}"] = p["gain"]["mean"]
                summary[f"gain_significant/{name}"] = p["gain"]["significant"]
        return stage.complete(summary)


def _probe_jobs(cfg) -> list[tuple[str, list]]:
    """(probe, prompts) for each probe the config asks for."""
    from alignlab.eval import probes as P

    jobs = []
    if "sycophancy" in cfg.probes:
        jobs.append(("sycophancy", P.sycophancy_prompts()))
    if "harmlessness" in cfg.probes:
        jobs.append(
            ("harmlessness", P.harmlessness_prompts(cfg.harmless_data, limit=cfg.harmless_limit, seed=cfg.seed))
        )
    return jobs


def _probe_policy(cfg, loaded, jobs) -> dict:
    """One policy's answers to the behaviour probes (one sampled response each), scored: {probe: result}."""
    from alignlab.data.records import Message, PromptRecord
    from alignlab.eval import probes as P
    from alignlab.gold import get_gold
    from alignlab.rollout.sampling import tokenize_prompts

    out = {}
    for probe, prompts in jobs:
        recs = [
            PromptRecord(
                tuple(Message(m["role"], m["content"]) for m in p) if isinstance(p, list) else (Message("user", p),)
            )
            for p in prompts
        ]
        ids = tokenize_prompts(recs, loaded.tokenizer, cfg.data.max_prompt_length)
        rows = sample_policy(loaded.model, loaded.tokenizer, recs, ids, k=1, rollout=cfg.rollout, seed=cfg.seed)
        responses = [r["response"] for r in rows]
        if probe == "sycophancy":
            out[probe] = P.score_sycophancy(responses)
        else:
            out[probe] = P.score_harmlessness(prompts, responses, get_gold("harmless"))
    return out


def run_report(cfg) -> dict:
    """The pipeline's report stage: alignlab.report.build_report on the run folder."""
    from alignlab.report import build_report
    from alignlab.runs import run_path
    from alignlab.trainers.run import open_stage

    with open_stage(cfg, "report") as stage:
        html = build_report(run_path(cfg.output_dir, cfg.run_name), save_pngs=cfg.figures)
        return stage.complete(
            {"stage": "report", "report": str(html), "summary": str(Path(html).parent / "summary.json")}
        )
