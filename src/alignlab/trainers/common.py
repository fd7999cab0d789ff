"""What every stage does the same way: open its run folder, load data and model, save, sample.

Trainers call these functions (composition); none of them subclasses another trainer.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from alignlab.errors import DataError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def load_split(data_cfg, kind: str, seed: int, log) -> tuple[list, list]:
    """(train, eval) records of ``kind``: eval from ``data.eval`` or held out from train."""
    from alignlab.data import load_records, split_records

    train = load_records(data_cfg.train, kind, limit=data_cfg.limit)
    log.info("data %s: %s", train.source, train.counts)
    if data_cfg.eval:
        held = load_records(data_cfg.eval, kind)
        log.info("eval data %s: %s", held.source, held.counts)
        train_records, eval_records = train.records, held.records
    elif data_cfg.eval_fraction > 0 and len(train.records) > 1:
        train_records, eval_records = split_records(train.records, data_cfg.eval_fraction, seed)
    else:
        train_records, eval_records = train.records, []
    if not train_records:
        raise DataError(str(data_cfg.train), f"no usable {kind} records (counts: {train.counts})")
    return train_records, eval_records


def base_name(model_cfg) -> str:
    """The model name to record in saved adapters: absolute when it is a local folder."""
    p = Path(model_cfg.name_or_path).expanduser()
    return str(p.resolve()) if p.exists() else model_cfg.name_or_path


def model_io(model, tokenizer, model_cfg, seed: int):
    """(save_fn, load_fn) for checkpoints of a causal LM (full weights or LoRA adapter)."""
    from alignlab.models.load import restore_weights, save_pretrained

    def save(folder):
        save_pretrained(model, tokenizer, Path(folder), base=base_name(model_cfg), seed=seed)

    def load(folder):
        restore_weights(model, Path(folder))

    return save, load


def sample_responses(model, tokenizer, records, *, n: int, max_new_tokens: int = 96, seed: int = 0) -> list[dict]:
    """Greedy-free samples for a run's samples.jsonl: prompt, response, finished."""
    from alignlab.data.tokenize import encode_prompt, messages_of
    from alignlab.rollout.generate import SamplingParams, TransformersEngine

    chosen = records[:n]
    if not chosen:
        return []
    prompts = [encode_prompt(tokenizer, r.prompt) for r in chosen]
    gens = TransformersEngine(model, tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7, top_p=0.9, seed=seed)
    )
    rows = []
    for rec, g in zip(chosen, gens):
        rows.append(
            {
                "prompt": messages_of(rec.prompt),
                "response": g.text,
                "finished": g.finished,
                "reference": getattr(rec, "response", None),
            }
        )
    return rows
