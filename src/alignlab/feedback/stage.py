"""The pipeline's label stage: preference labels for a run from the configured feedback source.

In round r ≥ 2 of an iterated run (run name ``<run>@<r>``, folder ``label@<r>``; see
:mod:`alignlab.runs`) the stage labels the r-th slice of the prompt set — prompts
(r − 1)·limit … r·limit − 1, wrapping around — so each round brings new pairs, and it also writes
``preferences-all.jsonl``: every round's labels up to r (rows tagged with their ``round``), which the
round's reward model trains on. Round 1 is the stage as it always was.
"""

from __future__ import annotations

POOL = "preferences-all.jsonl"


def round_prompts(spec: str, limit: int | None, r: int) -> list:
    """Round r's prompts: the r-th run of ``limit`` prompts of ``spec`` (wrapping around); all when no limit."""
    from alignlab.feedback.sources import load_prompts

    every = load_prompts(spec)
    if limit is None or limit >= len(every):
        return every
    start = (r - 1) * limit
    return [every[(start + i) % len(every)] for i in range(limit)]


def write_pool(stage, cfg, r: int) -> int:
    """Write ``<label@r>/preferences-all.jsonl``: rounds 1..r's labels in order; returns its rows."""
    from alignlab.errors import ConfigError
    from alignlab.runs import atomic_write_jsonl, read_jsonl, round_name, split_round, stage_folder

    run = split_round(cfg.run_name)[0]
    rows = []
    for q in range(1, r + 1):
        folder = stage_folder(cfg.output_dir, round_name(run, q), "label")
        if q < r and not folder.is_complete():
            raise ConfigError(f"label@{r}: round {q}'s labels ({folder.path}) are not complete; run that round first")
        path = folder.path / "preferences.jsonl"
        rows += [{**row, "round": q} for row in read_jsonl(path)]
        if q < r:
            stage.consumed[f"labels@{q}"] = str(path)
    atomic_write_jsonl(stage.path / POOL, rows)
    return len(rows)


def run_label(cfg) -> dict:
    """Label the run's policy samples as a :class:`~alignlab.config.LabelConfig` says; returns the summary."""
    from alignlab.feedback.sources import label
    from alignlab.runs import split_round
    from alignlab.trainers.run import open_stage

    r = split_round(cfg.run_name)[1]
    with open_stage(cfg, "label") as stage:
        out = stage.path / "preferences.jsonl"
        prompts, limit = cfg.data.train, cfg.data.limit
        if r > 1:  # the r-th slice of the prompt set: the round's pairs are new
            prompts, limit = round_prompts(cfg.data.train, cfg.data.limit, r), None
        summary = label(
            cfg.source,
            out=out,
            policy=cfg.model.name_or_path,
            prompts=prompts,
            k=cfg.k,
            limit=limit,
            kind="preference" if cfg.k == 2 else "ranking",
            gold=cfg.gold,
            tau=cfg.tau,
            position_bias=cfg.position_bias,
            tie_margin=cfg.tie_margin,
            flip_rate=cfg.flip_rate,
            annotators=cfg.annotators,
            judge_model=cfg.judge_model,
            seed=cfg.seed,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            device=cfg.model.device,
        )
        stage.log.info("labels: %s", summary)
        if r > 1:
            summary.update(round=r, pool=write_pool(stage, cfg, r))
            stage.log.info("round %d: %d labels of rounds 1..%d in %s", r, summary["pool"], r, POOL)
        return stage.complete(
            {
                "stage": "label",
                **{k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None},
            }
        )
