"""Reward-model stage: a scalar head on the backbone's trunk, trained on comparisons.

Data: preference pairs, or rankings. ``bradley_terry`` sees pairs (a ranking of K gives its
K(K−1)/2 pairs); ``kwise`` and ``plackett_luce`` see whole groups (a pair is a group of K = 2).
One forward pass per micro-batch scores every response of it (``collate_pairs``: chosen rows,
then rejected; ``collate_rankings``: group after group). With ``data.share_prompt`` (default) a
pair is one row ``[prompt | chosen | rejected]``, its prompt computed once, each score read at the
last token of its response (``collate_shared_pairs``); a model whose attention ignores 4-D masks
gets the unshared rows instead, with a log line.

Normalisation: the reward's offset and scale are arbitrary (the BT loss sees only differences),
so after training they are fixed against the *reference policy*: the backbone as loaded samples
``norm_num_prompts`` responses on ``norm_prompts`` **before** training (saved in the run folder as
``norm_samples.jsonl`` and reused on resume), the trained model scores them, and ``shift``/``scale``
(their mean and population std) go into ``final/reward_norm.json``, so those responses score
mean 0, std 1. Held-out eval (accuracy, mean margin, ECE) uses the raw scores: the ones the
Bradley–Terry probability σ(r_w − r_l) was trained on.
"""

from __future__ import annotations

import json

import torch

from alignlab.data.collate import collate_pairs, collate_rankings, collate_shared_pairs
from alignlab.data.layout import attention_width
from alignlab.data.tokenize import Example, encode_prompt, tokenize_pairs, tokenize_rankings
from alignlab.losses.reward import (
    bradley_terry,
    calibration,
    get_reward_loss,
    reward_centering_penalty,
    reward_magnitude_penalty,
)
from alignlab.models.heads import RewardModel, restore_reward_model, save_reward_model, score_examples
from alignlab.models.load import load_model
from alignlab.models.logprobs import prompt_sharing_works
from alignlab.runs import atomic_write_jsonl
from alignlab.trainers.common import base_name, load_split, seed_everything
from alignlab.trainers.loop import fit
from alignlab.trainers.run import RunDir, open_stage


def _device(rm) -> torch.device:
    return rm.head.weight.device


def batch_rewards(rm: RewardModel, batch: dict) -> torch.Tensor:
    """Raw rewards of every sequence of a collated batch and every head: (N, K) float32."""
    device = _device(rm)
    if "score_index" in batch:  # shared prompt: several responses per row, scored at their last tokens
        return rm.forward_at(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["position_ids"].to(device),
            batch["score_index"].to(device),
        )
    return rm.forward_heads(batch["input_ids"].to(device), batch["attention_mask"].to(device))


# ----------------------------------------------------------------------------- losses per batch
def pair_margins(cfg, data_margins: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float | None:
    """The margin each pair must exceed: its own from the data (``margin_from_data``), else ``cfg.margin``."""
    if cfg.margin_from_data and data_margins is not None:
        m = data_margins.to(like.device, like.dtype)  # (B,), NaN where the record gave none
        return torch.where(torch.isnan(m), torch.full_like(m, cfg.margin), m)
    return cfg.margin or None


def pair_loss(
    cfg, rewards: torch.Tensor, n_pairs: int, data_margins: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict]:
    """Bradley–Terry on rows (chosen 0..B-1, rejected B..2B-1), per-pair mean, plus the penalties.

    ``rewards`` (2B,) or (2B, K): with K > 1 heads (an ensemble) each head has its own loss and the
    loss is their mean; the stats are those of the mean reward, plus ``rm/disagreement`` (the mean
    over rows of the heads' std).
    """
    if rewards.dim() == 2 and rewards.shape[1] > 1:
        K = rewards.shape[1]
        loss = sum(pair_loss(cfg, rewards[:, k], n_pairs, data_margins)[0] for k in range(K)) / K
        _, stats = pair_loss(cfg, rewards.detach().mean(-1), n_pairs, data_margins)
        stats["rm/disagreement"] = rewards.detach().std(-1).mean()
        return loss, stats
    rewards = rewards.reshape(-1)  # (2B,)
    chosen, rejected = rewards[:n_pairs], rewards[n_pairs:]  # (B,), (B,)
    loss, stats = bradley_terry(chosen, rejected, pair_margins(cfg, data_margins, chosen))
    if cfg.center_rewards:
        penalty, pstats = reward_centering_penalty(chosen, rejected, cfg.center_rewards)
        loss, stats = loss + penalty, {**stats, **pstats}
    return _with_penalty(cfg, loss, stats, rewards)


def group_loss(cfg, rewards: torch.Tensor, group_sizes: list[int], ranks: list[list[int]]) -> tuple[torch.Tensor, dict]:
    """A listwise loss over groups that may differ in K: each K's groups form one (n_K, K) block.

    The loss is a per-prompt mean: each block's mean weighted by its share n_K / n of the groups.
    """
    fn = get_reward_loss(cfg.loss).fn
    starts = torch.tensor([0] + group_sizes[:-1]).cumsum(0).tolist()
    n = len(group_sizes)
    loss, stats = rewards.new_zeros(()), {}
    for k in sorted(set(group_sizes)):
        members = [g for g in range(n) if group_sizes[g] == k]
        rows = torch.tensor([starts[g] + j for g in members for j in range(k)], device=rewards.device)
        block = rewards[rows].view(len(members), k)  # (n_K, K)
        block_ranks = torch.tensor([ranks[g] for g in members], device=rewards.device)  # (n_K, K)
        part, part_stats = fn(block, block_ranks)
        w = len(members) / n
        loss = loss + w * part
        for key, v in part_stats.items():
            stats[key] = stats.get(key, 0.0) + w * v
    return _with_penalty(cfg, loss, stats, rewards)


def _with_penalty(cfg, loss, stats, rewards):
    if cfg.magnitude_penalty:
        penalty, pstats = reward_magnitude_penalty(rewards, cfg.magnitude_penalty)
        loss = loss + penalty
        stats.update(pstats)
    return loss, stats


# ----------------------------------------------------------------------------- scoring
@torch.no_grad()
def heldout_stats(rm: RewardModel, pairs, pad_id: int, batch_size: int) -> dict:
    """Accuracy, mean margin and ECE of σ(r_w − r_l) on held-out pairs (raw scores)."""
    chosen = score_examples(rm, [p.chosen() for p in pairs], pad_id, batch_size=batch_size)
    rejected = score_examples(rm, [p.rejected() for p in pairs], pad_id, batch_size=batch_size)
    cal = calibration(chosen, rejected)
    return {
        "accuracy": float(cal["accuracy"]),
        "margin": float(cal["margin"]),
        "ece": float(cal["ece"]),
        "pairs": len(pairs),
    }


def reference_samples(run: RunDir, rm: RewardModel, tokenizer, cfg) -> list[Example]:
    """The reference policy's responses on the normalisation prompts (sampled once, kept in the run folder)."""
    from alignlab.data import load_records
    from alignlab.rollout.generate import SamplingParams, TransformersEngine

    path = run.path / "norm_samples.jsonl"
    if cfg.norm_num_prompts == 0:
        return []
    if path.is_file() and cfg.train.resume:  # the same samples as before the interruption
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Example(r["prompt_ids"], r["response_ids"], r["where"]) for r in rows]
    records = load_records(cfg.norm_prompts, "prompt", limit=cfg.norm_num_prompts).records
    prompts = [encode_prompt(tokenizer, r.prompt)[-cfg.data.max_prompt_length :] for r in records]
    params = SamplingParams(max_new_tokens=cfg.norm_max_new_tokens, temperature=1.0, top_p=1.0, seed=cfg.train.seed)
    gens = TransformersEngine(rm.backbone, tokenizer).generate(prompts, params)
    examples = [
        Example(g.prompt_ids, g.response_ids or [tokenizer.eos_token_id], r.where) for g, r in zip(gens, records)
    ]
    rows = [
        {"where": e.where, "prompt_ids": e.prompt_ids, "response_ids": e.response_ids, "response": g.text}
        for e, g in zip(examples, gens)
    ]
    atomic_write_jsonl(path, rows)
    return examples


def normalisation(rm: RewardModel, samples: list[Example], pad_id: int, batch_size: int, source: str) -> dict:
    """``shift``/``scale``: mean and population std of the raw scores of ``samples``."""
    if not samples:
        return {"shift": 0.0, "scale": 1.0, "n": 0, "prompts": None}
    raw = score_examples(rm, samples, pad_id, batch_size=batch_size).double()
    scale = float(raw.std(unbiased=False)) if len(raw) > 1 else 1.0
    return {"shift": float(raw.mean()), "scale": scale if scale > 1e-6 else 1.0, "n": len(raw), "prompts": source}


# ----------------------------------------------------------------------------- the stage
def train_reward(cfg, *, stop_after: int | None = None) -> dict:
    """Train the reward model described by a :class:`~alignlab.config.RewardConfig`; returns a summary.

    Writes ``<output_dir>/<run_name>/reward``; ``final/`` is a reward-model folder in the Hugging
    Face sequence-classification layout (see ``models.heads``), which
    :func:`~alignlab.models.heads.load_reward_model` and ``AutoModelForSequenceClassification`` read.
    """
    spec = get_reward_loss(cfg.loss)
    with open_stage(cfg, "reward") as run:
        seed = cfg.train.seed
        seed_everything(seed)
        train_records, eval_records = load_split(cfg.data, cfg.data_kind, seed, run.log)
        loaded = load_model(cfg.model, seed=seed)
        tokenizer, pad_id = loaded.tokenizer, loaded.tokenizer.pad_token_id
        rm = RewardModel(loaded.model, seed=seed, heads=cfg.heads)
        lengths = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
        if spec.listwise:
            items, stats = tokenize_rankings(train_records, tokenizer, **lengths)

            def make_batch(groups):
                return collate_rankings(groups, pad_id)

            def step_fn(batch):
                return group_loss(cfg, batch_rewards(rm, batch).mean(-1), batch["group_sizes"], batch["ranks"])

        else:
            items, stats = tokenize_pairs(train_records, tokenizer, **lengths)
            share = cfg.data.share_prompt and prompt_sharing_works(rm.backbone, run.log)
            width = attention_width(rm.backbone.config)

            def make_batch(pairs):
                if share:  # on the rows of least padding-plus-attention work (data.layout)
                    return collate_shared_pairs(pairs, pad_id, attention_width=width)
                return collate_pairs(pairs, pad_id)

            def step_fn(batch):
                return pair_loss(cfg, batch_rewards(rm, batch), batch["n_pairs"], batch.get("margins"))

        eval_pairs, _ = tokenize_pairs(eval_records, tokenizer, **lengths)
        if cfg.train.eval_batches:
            eval_pairs = eval_pairs[: cfg.train.eval_batches * cfg.train.batch_size]
        run.log.info("tokenised train: %s; eval pairs: %d", stats.as_dict(), len(eval_pairs))
        samples = reference_samples(run, rm, tokenizer, cfg)  # before any training step

        base = base_name(cfg.model)

        def save_fn(folder):  # checkpoints keep the trunk as trained (a LoRA adapter stays small): exact resume
            save_reward_model(rm, tokenizer, folder, base=base, seed=seed, layout="checkpoint")

        def load_fn(folder):
            restore_reward_model(rm, folder)

        result = fit(
            cfg=cfg.train,
            run=run,
            model=rm,
            items=items,
            make_batch=make_batch,
            step_fn=step_fn,
            save_model=save_fn,
            load_model=load_fn,
            eval_fn=(lambda: heldout_stats(rm, eval_pairs, pad_id, cfg.train.batch_size)) if eval_pairs else None,
            params=rm.trainable_parameters(),
            stop_after=stop_after,
        )
        summary = {
            "stage": "reward",
            "loss": cfg.loss,
            "steps": result.step,
            "train_loss": result.train_stats.get("loss"),
            "train_accuracy": result.train_stats.get("rewards/accuracy"),
            "eval": result.eval_stats,
            "train_items": len(items),
            "eval_pairs": len(eval_pairs),
            "truncation": stats.as_dict(),
            "skipped_steps": result.skipped_steps,
        }
        if not result.finished:
            return summary  # stopped early on purpose (a simulated crash): not complete
        norm = normalisation(rm, samples, pad_id, cfg.train.batch_size, cfg.norm_prompts)
        norm.update(lengths)  # the truncation the model was trained with, for `alignlab score`
        rm.shift, rm.scale = norm["shift"], norm["scale"]
        run.log.info(
            "normalisation on %d reference responses: shift %.4g, scale %.4g", norm["n"], norm["shift"], norm["scale"]
        )
        run.replace_final(lambda folder: save_reward_model(rm, tokenizer, folder, base=base, seed=seed, norm=norm))
        summary["normalisation"] = norm
        return run.complete(summary)
