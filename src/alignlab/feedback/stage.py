"""The pipeline's label stage: preference labels for a run from the configured feedback source."""

from __future__ import annotations


def run_label(cfg) -> dict:
    """Label the run's policy samples as a :class:`~alignlab.config.LabelConfig` says; returns the summary."""
    from alignlab.feedback.sources import label
    from alignlab.trainers.run import open_stage

    with open_stage(cfg, "label") as stage:
        out = stage.path / "preferences.jsonl"
        summary = label(
            cfg.source,
            out=out,
            policy=cfg.model.name_or_path,
            prompts=cfg.data.train,
            k=cfg.k,
            limit=cfg.data.limit,
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
        return stage.complete(
            {
                "stage": "label",
                **{k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None},
            }
        )
