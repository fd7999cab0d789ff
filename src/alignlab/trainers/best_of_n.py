"""Best-of-n: an inference-time method — sample n responses per prompt, keep the highest-scored one.

No weights change. The chosen responses follow the best-of-n distribution, whose KL to the
sampling policy is at most ``log n − (n−1)/n`` nats (``losses.advantages.best_of_n_kl``; exact when
the n samples are almost surely distinct) — the yardstick for RL methods' score-vs-KL frontiers.

Writes ``<output_dir>/<run_name>/best-of-n/``: ``config.yaml``, ``responses.jsonl`` (one row per
prompt: prompt, the best response, its score, all n scores and responses' EOS flags) and
``COMPLETE`` with the summary. Running it again overwrites the folder's files.
"""
from __future__ import annotations

import json

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
    from alignlab.config import save_config
    from alignlab.data import load_records
    from alignlab.data.tokenize import messages_of
    from alignlab.models.load import load_model
    from alignlab.rollout.rewards import load_reward_source
    from alignlab.rollout.vllm_engine import make_engine
    from alignlab.rollout.sampling import sample_rollout, sampling_params, score_rollout, tokenize_prompts
    from alignlab.trainers.run import RunDir

    reward = load_reward_source(cfg.reward.source, cfg.reward.kwargs, device=cfg.model.device, batch_size=cfg.reward.batch_size)
    run = RunDir(cfg.output_dir, cfg.run_name, "best-of-n")
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "COMPLETE").unlink(missing_ok=True)
    save_config(cfg, run.path / "config.yaml")
    records = load_records(cfg.data.train, "prompt", limit=cfg.data.limit).records
    loaded = load_model(cfg.model, seed=cfg.seed, for_training=False)
    engine = make_engine(cfg.rollout.engine, loaded.model, loaded.tokenizer, batch_size=cfg.rollout.generation_batch_size,
                         gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, seed=cfg.seed)
    ids = tokenize_prompts(records, loaded.tokenizer, cfg.data.max_prompt_length)
    _, gens = sample_rollout(engine, loaded.tokenizer, ids, sampling_params(cfg.rollout, seed=cfg.seed), k=cfg.n)
    scores = score_rollout(reward, records, gens, truncation_penalty=cfg.rollout.truncation_penalty, k=cfg.n)  # (P·n,)
    index, best = pick_best(scores, cfg.n)
    grouped = scores.reshape(-1, cfg.n)
    with open(run.path / "responses.jsonl", "w", encoding="utf-8") as fh:
        for p, rec in enumerate(records):
            g = gens[p * cfg.n + int(index[p])]
            fh.write(json.dumps({
                "prompt": messages_of(rec.prompt),
                "response": g.text,
                "score": float(best[p]),
                "scores": grouped[p].tolist(),
                "finished": [x.finished for x in gens[p * cfg.n : (p + 1) * cfg.n]],
            }, ensure_ascii=False) + "\n")
    summary = {
        "stage": "best-of-n",
        "n": cfg.n,
        "prompts": len(records),
        "best_score": float(best.mean()),
        "mean_score": float(scores.mean()),  # the sampling policy's expected score (best-of-1)
        "kl": best_of_n_kl(cfg.n),  # analytic bound, nats
        "responses": str(run.path / "responses.jsonl"),
    }
    run.mark_complete(summary)
    summary["run_dir"] = str(run.path)
    return summary
