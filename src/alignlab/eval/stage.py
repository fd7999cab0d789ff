"""The pipeline's eval stage: sample every policy of a run on the same prompts, score, evaluate.

Generation and the log-prob passes happen here (torch, imported inside the functions); the maths
is :func:`alignlab.eval.evaluate.evaluate_run`, which reads and writes only files. For each
policy (a complete stage of the run with a ``final/`` model) it samples ``samples`` responses per
prompt, scores them with the gold reward and the proxy (the run's reward model), and computes the
per-token log-probs of each response under the policy and under the baseline (π_ref), so the KL
estimates are of KL(π‖π_ref) on samples from π. The baseline also gives ``bon_samples``
responses per prompt for the best-of-n curve.

Optional, each from its EvalConfig key: every objective's value per response (``objectives``);
the held-out NLL of reference answers, while each policy is loaded (``heldout_limit`` > 0: the
alignment tax); the AI judge on each policy's responses against the baseline's, after sampling
(``judge``); lm-evaluation-harness on each policy's final folder, last (``lm_eval``).
"""

from __future__ import annotations

from pathlib import Path

POLICY_STAGES = ("sft", "dpo", "ppo", "rloo", "grpo")


def policy_folders(run_path: Path, names: list[str]) -> dict[str, Path]:
    """{stage: final/} of the run's complete policy stages (``names``, or all of POLICY_STAGES)."""
    from alignlab.errors import ConfigError
    from alignlab.runs import StageFolder

    out = {}
    for name in names or (*POLICY_STAGES, *round_policies(run_path)):
        folder = StageFolder(run_path / name)
        if folder.is_complete() and folder.final.is_dir():
            out[name] = folder.final
        elif names:
            raise ConfigError(f"eval: policy '{name}' has no complete stage with a final model in {run_path}")
    return out


# ----------------------------------------------------------------------------- rounds (iterated RLHF)
def round_policies(run_path: Path) -> list[str]:
    """The later rounds' policy stages of an iterated run (``dpo@2``, ``ppo@2``, ...), round by round."""
    from alignlab.runs import list_stages, planned_rounds, split_round

    last = planned_rounds(run_path) or float("inf")
    found = [s for s in list_stages(run_path) if 1 < split_round(s)[1] <= last and split_round(s)[0] in POLICY_STAGES]
    return sorted(found, key=lambda s: split_round(s)[1])


def round_reward_models(cfg, run: Path, policies: dict[str, list[dict]], log) -> dict | None:
    """Each reward model of the run against gold on the eval responses (eval.json ``reward_models``):
    :func:`~alignlab.eval.evaluate.rm_gold_agreement` says how often it orders two responses to a
    prompt as the gold reward does. An iterated run scores every response with each round's reward
    model (``reward``, ``reward@2``, ...); a one-round run reads the proxy scores already there
    (keyed ``reward`` when the proxy is the run's reward stage, else ``proxy``). None without either."""
    from alignlab.data.records import Message
    from alignlab.eval.evaluate import rm_gold_agreement
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.runs import StageFolder, list_stages, planned_rounds, split_round

    last = planned_rounds(run) or float("inf")
    names = [
        s
        for s in list_stages(run)
        if split_round(s)[0] == "reward" and split_round(s)[1] <= last and StageFolder(run / s).final.is_dir()
    ]
    rows = [r for rs in policies.values() for r in rs]
    if not any(split_round(s)[1] > 1 for s in names):
        if not cfg.proxy or not rows or any("score" not in r for r in rows):
            return None
        name = "reward" if Path(cfg.proxy).resolve() == StageFolder(run / "reward").final.resolve() else "proxy"
        found = rm_gold_agreement(rows, [r["score"] for r in rows])
        log.info("%s: agrees with gold on %s of %d response pairs", name, found["agreement"], found["pairs"])
        return {name: found}
    prompts = [tuple(Message(m["role"], m["content"]) for m in r["prompt"]) for r in rows]
    out = {}
    for name in names:
        rm = load_reward_source(str(StageFolder(run / name).final), device=cfg.model.device)
        scores = rm.score(
            prompts, [r["response"] for r in rows], finished=[bool(r["finished"]) for r in rows], meta=[{}] * len(rows)
        )
        out[name] = rm_gold_agreement(rows, scores.tolist())
        log.info("%s: agrees with gold on %s of %d response pairs", name, out[name]["agreement"], out[name]["pairs"])
    return out


def _load(path: Path, model_cfg, seed: int):
    from alignlab.config import from_dict, to_dict
    from alignlab.config.sections import ModelConfig
    from alignlab.models.load import load_model

    cfg = from_dict(ModelConfig, {**to_dict(model_cfg), "name_or_path": str(path), "lora": {"enabled": False}})
    return load_model(cfg, seed=seed, for_training=False)


def sample_policy(model, tokenizer, records, prompt_ids, *, k: int, rollout, seed: int, ref_model=None) -> list[dict]:
    """k responses per prompt with per-token log-probs under the model and (if given) ``ref_model``.

    In float32 the model's own log-probs are recorded while sampling (``SamplingParams.logprobs``:
    equal to a forward pass to 2e-5), so only π_ref needs a forward pass, and none when the model
    is its own reference (the baseline). In lower precision the cached decoding path and a full
    forward pass round differently, and the difference would add up over a response into the KL
    estimate: there both come from the same forward pass.
    """
    import dataclasses

    import torch

    from alignlab.data.tokenize import messages_of
    from alignlab.models.logprobs import shares_prefix_exactly
    from alignlab.rollout.generate import TransformersEngine
    from alignlab.rollout.passes import response_logprobs
    from alignlab.rollout.sampling import sample_rollout, sampling_params

    recorded = next(model.parameters()).dtype == torch.float32
    engine = TransformersEngine(model, tokenizer, batch_size=rollout.generation_batch_size)
    params = dataclasses.replace(sampling_params(rollout, seed=seed), logprobs=recorded)
    exp, gens = sample_rollout(engine, tokenizer, prompt_ids, params, k=k)
    device = next(model.parameters()).device
    passes = {"ref": ref_model if ref_model is not model else None, "own": None if recorded else model}
    out: dict[str, list] = {name: [] for name, m in passes.items() if m is not None}
    # the k responses of a prompt compute it once (rollout.shared_prompt), where the model honours 4-D masks
    share = {name: k > 1 and shares_prefix_exactly(m)[0] for name, m in passes.items() if m is not None}
    with torch.no_grad():
        for s in range(0, len(exp), rollout.forward_batch_size):
            part = exp.select(torch.arange(s, min(s + rollout.forward_batch_size, len(exp))))
            for name in out:
                m = passes[name]
                lp = response_logprobs(m, part, temperature=rollout.temperature, device=device, share=share[name])[0]
                out[name].append(lp.float().cpu())
    done = {name: torch.cat(chunks) for name, chunks in out.items()}
    rows = []
    for i, g in enumerate(gens):
        n = int(exp.response_mask[i].sum())
        rec = records[i // k]
        logp = [float(x) for x in g.logprobs[:n]] if recorded else done["own"][i, :n].tolist()
        ref = done["ref"][i, :n].tolist() if "ref" in done else (logp if ref_model is model else None)
        rows.append(
            {
                "prompt": messages_of(rec.prompt),
                "response": g.text,
                "finished": g.finished,
                "length": len(g.response_ids),
                "logprobs": logp,
                "ref_logprobs": ref,
            }
        )
    return rows


def sample_and_score(cfg, loaded, records, ids, *, k: int, ref, gold_fn, proxy) -> list[dict]:
    """One policy's (or checkpoint's) eval rows: :func:`sample_policy`, then each response's gold
    reward (``gold``) and, when the run has a reward model, its proxy score (``score``)."""
    from alignlab.eval.evaluate import last_user_message

    rows = sample_policy(
        loaded.model, loaded.tokenizer, records, ids, k=k, rollout=cfg.rollout, seed=cfg.seed, ref_model=ref.model
    )
    responses = [r["response"] for r in rows]
    for r, g in zip(rows, gold_fn([last_user_message(r["prompt"]) for r in rows], responses)):
        r["gold"] = float(g)
    if proxy is not None:
        recs = [records[i // k] for i in range(len(rows))]
        scores = proxy.score(
            [r.prompt for r in recs], responses, finished=[r["finished"] for r in rows], meta=[r.meta for r in recs]
        )
        for r, sc in zip(rows, scores.tolist()):
            r["score"] = float(sc)
    return rows


def run_eval(cfg) -> dict:
    """Evaluate the run named by an :class:`~alignlab.config.EvalConfig`; returns the summary."""
    from alignlab.data import load_records
    from alignlab.eval.evaluate import evaluate_run
    from alignlab.eval.objectives import load_objectives, parse_objectives
    from alignlab.gold import get_gold
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.rollout.sampling import tokenize_prompts
    from alignlab.runs import run_path
    from alignlab.trainers.common import seed_everything
    from alignlab.trainers.run import open_stage

    gold_fn = get_gold(cfg.gold)
    load_objectives(cfg.objectives)  # a bad spec fails here, before any sampling
    if cfg.lm_eval:
        from alignlab.eval.lm_harness import require_lm_eval

        require_lm_eval(cfg.lm_eval)  # so does a missing lm-eval
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
        if cfg.judge:
            stage.consumed["judge"] = cfg.judge
        records = load_records(cfg.data.train, "prompt", limit=cfg.data.limit).records
        held_recs = _heldout_records(cfg, run)
        if held_recs:
            stage.consumed["heldout"] = cfg.heldout_data
        heldout = {}
        ref = _load(folders[cfg.baseline], cfg.model, cfg.seed)
        ids = tokenize_prompts(records, ref.tokenizer, cfg.data.max_prompt_length, stage.log)
        policies, probes = {}, {}
        probe_jobs = _probe_jobs(cfg)
        for name, path in folders.items():
            stage.log.info("sampling %s (%s)", name, path)
            loaded = ref if name == cfg.baseline else _load(path, cfg.model, cfg.seed)
            # the baseline's extra samples per prompt give the best-of-n curve (evaluate_run's bon_source)
            k = max(cfg.samples, cfg.bon_samples) if name == cfg.baseline else cfg.samples
            policies[name] = sample_and_score(cfg, loaded, records, ids, k=k, ref=ref, gold_fn=gold_fn, proxy=proxy)
            if held_recs:
                heldout[name] = _heldout_nll(cfg, loaded, held_recs)
            for probe, result in (_probe_policy(cfg, loaded, probe_jobs) if probe_jobs else {}).items():
                probes.setdefault(probe, {})[name] = result  # answered while the model is loaded
            del loaded
        probes = probes or None
        if cfg.judge:
            _judge_policies(cfg, policies, stage.log)
        lm_eval = None
        if cfg.lm_eval:
            from alignlab.eval.lm_harness import run_lm_eval
            from alignlab.models.load import resolve_device

            lm_eval = run_lm_eval(
                folders,
                cfg.lm_eval,
                limit=cfg.lm_eval_limit,
                device=str(resolve_device(cfg.model.device)),
                seed=cfg.seed,
                log=stage.log,
            )
        bon = cfg.baseline if max(cfg.samples, cfg.bon_samples) >= 2 else None
        reward_models = round_reward_models(cfg, run, policies, stage.log)
        result = evaluate_run(
            run,
            policies=policies,
            gold_fn=gold_fn,
            baseline=cfg.baseline,
            bon_source=bon,
            probes=probes,
            judge=cfg.judge,
            judge_tie_margin=cfg.judge_tie_margin,
            heldout=heldout or None,
            heldout_source=cfg.heldout_data if heldout else None,
            objectives=parse_objectives(cfg.objectives),
            lm_eval=lm_eval,
            reward_models=reward_models,
            checkpoints=checkpoint_policies(cfg, run, records, ids, ref, gold_fn, proxy, stage.log) or None,
            seed=cfg.seed,
        )
        summary = {"stage": "eval", "policies": list(folders), "prompts": len(records), "baseline": cfg.baseline}
        for name, p in result["policies"].items():
            summary[f"gold/{name}"] = p["gold"]["mean"]
            if p.get("gain"):
                summary[f"gain/{name}"] = p["gain"]["mean"]
                summary[f"gain_significant/{name}"] = p["gain"]["significant"]
            if p.get("judge"):
                summary[f"judge_win_rate/{name}"] = p["judge"]["win_rate"]["win_rate"]
            if (p.get("heldout") or {}).get("tax"):
                summary[f"alignment_tax/{name}"] = p["heldout"]["tax"]["mean"]
        return stage.complete(summary)


def checkpoint_policies(cfg, run: Path, records, ids, ref, gold_fn, proxy, log) -> dict[str, list[dict]]:
    """``{"<stage>@<step>": rows}`` for every complete checkpoint of the stages in ``cfg.checkpoints``,
    in step order, sampled and scored (gold, proxy) like the policies, with log-probs under the
    baseline ``ref``: what :func:`~alignlab.eval.evaluate.evaluate_run` takes as ``checkpoints``."""
    from alignlab.errors import ConfigError
    from alignlab.runs import StageFolder
    from alignlab.trainers.checkpoint import list_complete

    out: dict[str, list[dict]] = {}
    for name in cfg.checkpoints:
        found = list_complete(StageFolder(run / name).checkpoints)
        if not found:
            raise ConfigError(
                f"eval: 'checkpoints' names '{name}' but {run / name / 'checkpoints'} holds no complete checkpoint "
                "(give that stage train.save_every, and a train.keep_last that keeps them)"
            )
        for folder in found:
            log.info("sampling %s checkpoint %s", name, folder)
            loaded = _load(folder / "model", cfg.model, cfg.seed)
            rows = sample_and_score(cfg, loaded, records, ids, k=cfg.samples, ref=ref, gold_fn=gold_fn, proxy=proxy)
            out[f"{name}@{int(folder.name.split('-')[-1])}"] = rows
            del loaded
    return out


def _heldout_records(cfg, run: Path) -> list:
    """The alignment tax's reference answers. When the run's SFT stage trained on ``heldout_data``,
    its own held-out split, exactly (its data settings and seed, read from its config.yaml), so no
    answer the policies were fine-tuned on is scored; otherwise :func:`~alignlab.eval.heldout.heldout_records`."""
    if cfg.heldout_limit <= 0:
        return []
    import logging

    import yaml

    from alignlab.config import SFTConfig, from_dict
    from alignlab.errors import ConfigError
    from alignlab.eval.heldout import heldout_records
    from alignlab.runs import StageFolder
    from alignlab.trainers.common import load_split

    saved = StageFolder(run / "sft").config
    sft = None
    if saved.is_file():
        try:
            sft = from_dict(SFTConfig, yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
        except ConfigError:  # written by another alignlab version: fall back to the knobs
            sft = None
    if sft is not None:
        if sft.data.train == cfg.heldout_data:
            held = load_split(sft.data, "sft", sft.train.seed, logging.getLogger("alignlab.eval"))[1]
            if held:
                return list(held[: cfg.heldout_limit])
    return heldout_records(cfg.heldout_data, fraction=cfg.heldout_fraction, limit=cfg.heldout_limit, seed=cfg.seed)


def _heldout_nll(cfg, loaded, records) -> list[dict]:
    from alignlab.eval.heldout import heldout_nll

    return heldout_nll(
        loaded.model,
        loaded.tokenizer,
        records,
        max_length=cfg.data.max_length,
        max_prompt_length=cfg.data.max_prompt_length,
        batch_size=cfg.rollout.forward_batch_size,
    )


def _judge_policies(cfg, policies: dict[str, list[dict]], log) -> None:
    """Each non-baseline row gets ``judge`` (P(it ≻ the baseline's response), both orders averaged)
    and ``judge_consistent``, for the pairs :func:`alignlab.eval.compare.index_pairs` forms."""
    from alignlab.eval.compare import index_pairs
    from alignlab.feedback.judge import Judge

    judge = Judge.from_preset(cfg.judge, device=cfg.model.device, seed=cfg.seed)
    base = policies[cfg.baseline]
    for name, rows in policies.items():
        if name == cfg.baseline:
            continue
        pairs = index_pairs(rows, base)
        log.info("judging %s against %s: %d pairs, both orders (%s)", name, cfg.baseline, len(pairs), cfg.judge)
        cmp = judge.compare(
            [rows[i]["prompt"] for i, _ in pairs],
            [rows[i]["response"] for i, _ in pairs],
            [base[j]["response"] for _, j in pairs],
        )
        for (i, _), p, ok in zip(pairs, cmp.prob.tolist(), cmp.consistent.tolist()):
            rows[i]["judge"], rows[i]["judge_consistent"] = float(p), bool(ok)


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
