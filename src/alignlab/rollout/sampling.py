"""Turning prompt records into a scored rollout: tokenise, sample k responses per prompt, score.

Used by the RL stages (``trainers.rl``) and best-of-n. Rows are ``[prompt0 × k, prompt1 × k, ...]``
(see :mod:`alignlab.rollout.experience` for the tensor layout).
"""

from __future__ import annotations

import torch

from alignlab.rollout.experience import Experience, collate_rollout


def tokenize_prompts(records, tokenizer, max_prompt_length: int, log=None) -> list[list[int]]:
    """Each record's prompt through the chat template, cut from the left to ``max_prompt_length``."""
    from alignlab.data.tokenize import encode_prompt

    out, cut = [], 0
    for r in records:
        ids = encode_prompt(tokenizer, r.prompt)
        if len(ids) > max_prompt_length:
            ids, cut = ids[-max_prompt_length:], cut + 1
        out.append(ids)
    if log is not None:
        log.info("tokenised %d prompts (%d cut from the left to %d tokens)", len(out), cut, max_prompt_length)
    return out


def sampling_params(rollout_cfg, seed: int | None = None):
    from alignlab.rollout.generate import SamplingParams

    return SamplingParams(
        max_new_tokens=rollout_cfg.max_new_tokens,
        temperature=rollout_cfg.temperature,
        top_p=rollout_cfg.top_p,
        seed=seed,
    )


def sample_rollout(engine, tokenizer, prompt_ids: list[list[int]], params, *, k: int = 1) -> tuple[Experience, list]:
    """``k`` responses per prompt, rows ``[prompt0 × k, prompt1 × k, ...]`` -> (Experience, generations)."""
    prompts = [ids for ids in prompt_ids for _ in range(k)]
    gens = engine.generate(prompts, params)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    exp = collate_rollout(prompts, [g.response_ids for g in gens], [g.finished for g in gens], pad)
    return exp, gens


def score_rollout(source, records, gens, *, truncation_penalty: float, k: int = 1) -> torch.Tensor:
    """Scores ``(B·k,)`` of the generations (records repeated k times), minus the truncation penalty."""
    from alignlab.rollout.rewards import apply_truncation_penalty

    rows = [r for r in records for _ in range(k)]
    finished = torch.tensor([g.finished for g in gens], dtype=torch.bool)
    scores = source.score(
        [r.prompt for r in rows],
        [g.text for g in gens],
        finished=finished.tolist(),
        meta=[getattr(r, "meta", {}) for r in rows],
    )
    return apply_truncation_penalty(scores, finished, truncation_penalty)
