"""Direct preference stage: the DPO family (dpo, cdpo, ipo, hinge, robust), KTO, and the
reference-free ORPO and SimPO, all trained through the shared loop.

Per micro-batch of B pairs, chosen and rejected go through the policy in **one** forward pass.
With ``data.share_prompt`` (the default for the paired losses) each pair is one segment
``[prompt | chosen | rejected]`` whose prompt is computed once (``collate_shared_pairs``: a 4-D
mask hides chosen from rejected); otherwise 2B rows, chosen first (``collate_pairs``). A model
whose attention ignores 4-D masks fails a probe (``shares_prefix_exactly``) and gets the rows
unshared, with a log line. The LM head is chunked and checkpointed, so no (2B, T, V) float32
tensor is held. ``seq_logps`` are sums over response tokens; each loss is a
per-sequence mean (see ``losses.preference``).

π_ref is the model as loaded, and never a second copy: with LoRA, the adapter is disabled; with
full fine-tuning, the reference pass runs on the initial weights before the first step. Its
log-probs are computed once per data set and cached on disk (``trainers.reference``), so epochs,
later runs and resumed runs read the same float32 numbers. ORPO and SimPO use no reference.

KTO takes unpaired examples (a preference file is split into desirable/undesirable records by the
loader). Its reference point z0 is estimated on the batch's mismatched pairs (x_i, y_j): each
example i has a fixed partner j with another prompt (``mismatch_partners``, seeded), so those
rows' reference log-probs are cached like the others. Rows ``0..B-1`` are the examples, rows
``B..2B-1`` their mismatched pairs, again in one forward pass.
"""

from __future__ import annotations

import time

import torch

from alignlab.data.collate import collate_pairs, collate_shared_pairs, collate_unpaired
from alignlab.data.layout import DEFAULT_ATTENTION_WIDTH, attention_width
from alignlab.data.tokenize import (
    Example,
    TokenStats,
    fit_lengths,
    mismatch_partners,
    tokenize_pairs,
    tokenize_unpaired,
)
from alignlab.losses.preference import get_preference_loss, kto, kto_kl_ref_point, preference_loss
from alignlab.models.load import load_model
from alignlab.models.logprobs import prompt_sharing_works
from alignlab.trainers.common import load_split, model_io, sample_responses, seed_everything
from alignlab.trainers.loop import fit
from alignlab.trainers.reference import data_fingerprint, model_identity, reference_logps, seq_logps
from alignlab.trainers.run import open_stage


# ----------------------------------------------------------------------------- data sets
class PairSet:
    """Tokenised pairs; ``batch(indices)`` gives 2B sequences (chosen, then rejected) and ``index``.

    ``share_prompt``: each pair one ``[prompt | chosen | rejected]`` segment (``collate_shared_pairs``),
    laid out on the rows of least padding-plus-attention work for ``attention_width``
    (``data.layout``); ``pack_width`` then does not apply.
    """

    names = ("chosen", "rejected")

    def __init__(
        self,
        records,
        tokenizer,
        max_length: int,
        max_prompt_length: int,
        pack_width: int | None = None,
        share_prompt: bool = False,
        attention_width: float = DEFAULT_ATTENTION_WIDTH,
    ):
        self.examples, self.stats = tokenize_pairs(
            records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length
        )
        self.pad_id, self.pack_width, self.share_prompt = tokenizer.pad_token_id, pack_width, share_prompt
        self.attention_width = attention_width

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: list[int]) -> dict:
        pairs = [self.examples[i] for i in indices]
        if self.share_prompt:
            batch = collate_shared_pairs(pairs, self.pad_id, attention_width=self.attention_width)
        else:
            batch = collate_pairs(pairs, self.pad_id, self.pack_width)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch

    def fingerprint(self) -> str:
        return data_fingerprint((e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in self.examples)


class UnpairedSet:
    """Tokenised KTO examples; ``batch(indices)`` gives B example rows, then B mismatched rows."""

    names = ("logps", "mismatched")

    def __init__(
        self, records, tokenizer, max_length: int, max_prompt_length: int, seed: int, pack_width: int | None = None
    ):
        self.examples, self.stats = tokenize_unpaired(
            records, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length
        )
        self.pad_id, self.pack_width = tokenizer.pad_token_id, pack_width
        self.partners = mismatch_partners(self.examples, seed)
        cut = TokenStats()  # mismatched rows are cut to fit too; not counted as data truncation
        self.mismatched = []
        for ex, j in zip(self.examples, self.partners):
            prompt_ids, response_ids = fit_lengths(
                ex.prompt_ids, self.examples[j].response_ids, max_length, max_prompt_length, cut
            )
            self.mismatched.append(Example(prompt_ids, response_ids, ex.where))

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: list[int]) -> dict:
        batch = collate_unpaired(
            [self.examples[i] for i in indices], self.pad_id, [self.mismatched[i] for i in indices], self.pack_width
        )
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        return batch

    def fingerprint(self) -> str:
        return data_fingerprint(
            (e.prompt_ids, e.response_ids, m.response_ids, [int(e.meta["desirable"])])
            for e, m in zip(self.examples, self.mismatched)
        )


# ----------------------------------------------------------------------------- one micro-batch
def direct_loss(cfg, model, batch: dict, ref) -> tuple[torch.Tensor, dict]:
    """The configured loss on one batch: one policy forward pass over all its rows.

    ``ref`` is a :class:`~alignlab.trainers.reference.ReferenceLogps` (None for orpo/simpo).
    """
    spec = get_preference_loss(cfg.loss)
    device = next(model.parameters()).device
    logps = seq_logps(model, batch)  # (2B,)
    lengths = batch["seq_lengths"].to(device=device, dtype=torch.float32)  # (2B,) response tokens
    idx = batch["index"]
    if not spec.paired:  # KTO: rows 0..B-1 the examples, B..2B-1 their mismatched pairs
        B = batch["n_examples"]
        z0 = kto_kl_ref_point(logps[B:], ref.take("mismatched", idx, device))
        return kto(
            logps[:B],
            ref.take("logps", idx, device),
            batch["desirable"].to(device),
            z0,
            beta=cfg.hyperparameters()["beta"],
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
        )
    B = batch["n_pairs"]
    inputs = dict(
        chosen_logps=logps[:B],
        rejected_logps=logps[B:],
        chosen_lengths=lengths[:B],
        rejected_lengths=lengths[B:],
    )
    if spec.needs_reference:
        inputs["ref_chosen_logps"] = ref.take("chosen", idx, device)
        inputs["ref_rejected_logps"] = ref.take("rejected", idx, device)
    hyper = cfg.hyperparameters()
    return preference_loss(
        cfg.loss, **inputs, **{k: v for k, v in hyper.items() if k in (*spec.hyperparameters, "length_normalize")}
    )


def evaluate(cfg, model, data, ref, batch_size: int, max_batches: int = 0) -> dict:
    """Held-out loss and stats (per-batch means, then the mean over batches); no grad."""
    rows = []
    starts = list(range(0, len(data), batch_size))
    if max_batches:
        starts = starts[:max_batches]
    for s in starts:
        loss, stats = direct_loss(cfg, model, data.batch(list(range(s, min(s + batch_size, len(data))))), ref)
        rows.append({"loss": loss, **stats})
    return {k: sum(float(r[k]) for r in rows) / len(rows) for k in rows[0]} if rows else {}


# ----------------------------------------------------------------------------- the stage
def train_dpo(cfg, *, stop_after: int | None = None) -> dict:
    """Train the direct-preference stage described by a :class:`~alignlab.config.DPOConfig`.

    Writes ``<output_dir>/<run_name>/dpo`` (see ``trainers.run``); returns a summary.
    """
    spec = get_preference_loss(cfg.loss)
    with open_stage(cfg, "dpo") as run:
        seed = cfg.train.seed
        seed_everything(seed)
        kind = cfg.data_kind if spec.paired else "unpaired"
        train_records, eval_records = load_split(cfg.data, kind, seed, run.log)
        loaded = load_model(cfg.model, seed=seed)
        model, tokenizer = loaded.model, loaded.tokenizer
        if not cfg.dropout:
            from alignlab.models.policy import disable_dropout

            disable_dropout(model)  # the policy's pass then matches π_ref's (eval mode): no noise in β·log π/π_ref
        run.log.info("loss %s with %s", cfg.loss, cfg.hyperparameters())
        lengths = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)

        pack_width = cfg.data.max_length if cfg.data.packing else None
        share = spec.paired and cfg.data.share_prompt and prompt_sharing_works(model, run.log)
        width = attention_width(model.config)

        def make_set(records):
            if spec.paired:
                return PairSet(
                    records, tokenizer, **lengths, pack_width=pack_width, share_prompt=share, attention_width=width
                )
            return UnpairedSet(records, tokenizer, **lengths, seed=seed, pack_width=pack_width)

        train_set, eval_set = make_set(train_records), make_set(eval_records)
        run.log.info("tokenised train: %s; eval: %s", train_set.stats.as_dict(), eval_set.stats.as_dict())

        # π_ref: computed now, before fit() restores any checkpoint or takes a step
        refs = {"train": None, "eval": None}
        if spec.needs_reference:
            t0 = time.perf_counter()
            identity = model_identity(cfg.model, seed, model)
            for split, data in (("train", train_set), ("eval", eval_set)):
                if len(data):
                    refs[split] = reference_logps(
                        model,
                        identity=identity,
                        fingerprint=data.fingerprint(),
                        settings={
                            **lengths,
                            "kind": type(data).__name__,
                            "packing": cfg.data.packing,
                            **({"share_prompt": True} if share else {}),  # equal to ~1e-6, not bit for bit
                        },
                        n_items=len(data),
                        make_batch=data.batch,
                        names=data.names,
                        batch_size=cfg.train.batch_size,
                        use_cache=cfg.reference_cache,
                        progress=cfg.train.progress,
                        log=run.log,
                    )
            run.log.info("reference log-probs ready (%.1f s)", time.perf_counter() - t0)

        save_fn, load_fn = model_io(model, tokenizer, cfg.model, seed)
        eval_fn = None
        if len(eval_set):
            eval_fn = lambda: evaluate(cfg, model, eval_set, refs["eval"], cfg.train.batch_size, cfg.train.eval_batches)  # noqa: E731
        result = fit(
            cfg=cfg.train,
            run=run,
            model=model,
            items=list(range(len(train_set))),
            make_batch=train_set.batch,
            step_fn=lambda batch: direct_loss(cfg, model, batch, refs["train"]),
            save_model=save_fn,
            load_model=load_fn,
            eval_fn=eval_fn,
            stop_after=stop_after,
        )
        summary = {
            "stage": "dpo",
            "loss": cfg.loss,
            "steps": result.step,
            "train_loss": result.train_stats.get("loss"),
            "train_accuracy": result.train_stats.get("rewards/accuracy"),
            "eval": result.eval_stats,
            "train_examples": len(train_set),
            "eval_examples": len(eval_set),
            "truncation": train_set.stats.as_dict(),
            "share_prompt": share,
            "reference": _describe(refs["train"], spec.needs_reference),
            "skipped_steps": result.skipped_steps,
        }
        if not result.finished:
            return summary  # stopped early on purpose (a simulated crash): not complete
        run.replace_final(save_fn)
        if cfg.train.num_samples:
            run.write_samples(
                sample_responses(model, tokenizer, eval_records or train_records, n=cfg.train.num_samples, seed=seed)
            )
        return run.complete(summary)


def _describe(ref, needed: bool) -> dict:
    if not needed:
        return {"cache": "none (reference-free loss)"}
    if ref is None:
        return {"cache": "none (no data)"}
    return {"cache": "hit" if ref.hit else ("miss" if ref.path else "off"), "path": str(ref.path) if ref.path else None}
