"""Best-of-n: an inference-time method — sample n responses per prompt, keep the highest-scored one.

No weights change. The chosen responses follow the best-of-n distribution, whose KL to the
sampling policy is at most ``log n − (n−1)/n`` nats (``losses.advantages.best_of_n_kl``; exact when
the n samples are almost surely distinct) — the yardstick for RL methods' score-vs-KL frontiers.

A stage like the others (a row of the pipeline table, opened with ``open_stage``): writes
``<output_dir>/<run_name>/best-of-n/`` with ``config.yaml``, ``log.txt``, ``samples.jsonl`` (the
shared schema: one row per prompt with the best response and its score, plus ``scores``, all n
scores) and ``COMPLETE`` with the summary.
"""

from __future__ import annotations

import torch

from alignlab.losses.advantages import best_of_n_kl


def pick_best(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P·n,)`` scores grouped ``[prompt0 × n, ...]`` -> (index of the best within each group ``(P,)``, its score ``(P,)``).

    Ties go to the first sample.
    """
    grouped = scores.reshape(-1, n)  # (P, n)
    best, index = grouped.max(dim=-1)
    return index, best


def run_best_of_n(cfg) -> dict:
    """Run best-of-n as described by a :class:`~alignlab.config.BestOfNConfig`; returns the summary."""
    from alignlab.data import load_records
    from alignlab.data.tokenize import messages_of
    from alignlab.models.load import load_model
    from alignlab.rollout.precision import sampling_dtype
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.rollout.sampling import sample_rollout, sampling_params, score_rollout, tokenize_prompts
    from alignlab.rollout.vllm_engine import make_engine
    from alignlab.trainers.run import open_stage

    reward = load_reward_source(
        cfg.reward.source, cfg.reward.kwargs, device=cfg.model.device, batch_size=cfg.reward.batch_size
    )
    with open_stage(cfg, "best-of-n") as run:
        loaded = load_records(cfg.data.train, "prompt", limit=cfg.data.limit)
        run.log.info("data %s: %s", loaded.source, loaded.counts)
        records = loaded.records
        model = load_model(cfg.model, seed=cfg.seed, for_training=False)
        engine = make_engine(
            cfg.rollout.engine,
            model.model,
            model.tokenizer,
            batch_size=cfg.rollout.generation_batch_size,
            gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
            seed=cfg.seed,
            dtype=sampling_dtype(cfg.rollout.sampling_dtype),
        )
        ids = tokenize_prompts(records, model.tokenizer, cfg.data.max_prompt_length, run.log)
        _, gens = sample_rollout(engine, model.tokenizer, ids, sampling_params(cfg.rollout, seed=cfg.seed), k=cfg.n)
        scores = score_rollout(
            reward, records, gens, truncation_penalty=cfg.rollout.truncation_penalty, k=cfg.n
        )  # (P·n,)
        index, best = pick_best(scores, cfg.n)
        grouped = scores.reshape(-1, cfg.n)  # (P, n)
        rows = []
        for p, rec in enumerate(records):
            g = gens[p * cfg.n + int(index[p])]
            rows.append(
                {
                    "prompt": messages_of(rec.prompt),
                    "response": g.text,
                    "finished": g.finished,
                    "length": len(g.response_ids),
                    "score": float(best[p]),
                    "scores": grouped[p].tolist(),
                }
            )
        run.write_samples(rows)
        summary = {
            "stage": "best-of-n",
            "n": cfg.n,
            "prompts": len(records),
            "best_score": float(best.mean()),
            "mean_score": float(scores.mean()),  # the sampling policy's expected score (best-of-1)
            "kl": best_of_n_kl(cfg.n),  # analytic bound, nats
        }
        return run.complete(summary)
