"""Stage 1: supervised fine-tuning on (prompt, response) records, loss on response tokens only."""

from __future__ import annotations

from alignlab.data.collate import pack_rows, pad_examples
from alignlab.data.tokenize import pack, tokenize_sft
from alignlab.losses.reduce import masked_sum
from alignlab.losses.sft import sft_loss
from alignlab.models.load import load_model
from alignlab.models.logprobs import batch_logprobs
from alignlab.trainers.common import load_split, model_io, sample_responses, seed_everything
from alignlab.trainers.loop import fit
from alignlab.trainers.run import open_stage


def response_nll(model, batches) -> dict:
    """Held-out response negative log-likelihood, per token over all batches (no grad)."""
    total, count = 0.0, 0
    for batch in batches:
        logprobs = batch_logprobs(model, batch)
        mask = batch["loss_mask"].to(logprobs.device)
        total += float(masked_sum(-logprobs, mask))
        count += int(mask.sum())
    return {"nll": total / max(count, 1), "tokens": count}


def train_sft(cfg, *, stop_after: int | None = None) -> dict:
    """Train the SFT stage described by an :class:`~alignlab.config.SFTConfig`; returns a summary.

    Writes the run folder ``<output_dir>/<run_name>/sft`` (see ``trainers.run``).
    """
    with open_stage(cfg, "sft") as run:
        seed_everything(cfg.train.seed)
        train_records, eval_records = load_split(cfg.data, "sft", cfg.train.seed, run.log)
        loaded = load_model(cfg.model, seed=cfg.train.seed)
        model, tokenizer = loaded.model, loaded.tokenizer
        lengths = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
        train_ex, stats = tokenize_sft(train_records, tokenizer, **lengths)
        eval_ex, eval_stats = tokenize_sft(eval_records, tokenizer, **lengths)
        run.log.info("tokenised train: %s; eval: %s", stats.as_dict(), eval_stats.as_dict())
        pad_id = tokenizer.pad_token_id

        if cfg.data.packing:
            items = pack(train_ex, cfg.data.max_length)
            run.log.info("packed %d examples into %d rows", len(train_ex), len(items))

            def make_batch(groups):
                return pack_rows(groups, pad_id)

        else:
            items = train_ex

            def make_batch(examples):
                return pad_examples(examples, pad_id)

        def step_fn(batch):
            loss, stats = sft_loss(batch_logprobs(model, batch), batch["loss_mask"].to(next(model.parameters()).device))
            return loss, {k: v for k, v in stats.items() if k != "loss"}

        eval_batches = [
            pad_examples(eval_ex[i : i + cfg.train.batch_size], pad_id)
            for i in range(0, len(eval_ex), cfg.train.batch_size)
        ]
        if cfg.train.eval_batches:
            eval_batches = eval_batches[: cfg.train.eval_batches]
        save_fn, load_fn = model_io(model, tokenizer, cfg.model, cfg.train.seed)
        result = fit(
            cfg=cfg.train,
            run=run,
            model=model,
            items=items,
            make_batch=make_batch,
            step_fn=step_fn,
            save_model=save_fn,
            load_model=load_fn,
            eval_fn=(lambda: response_nll(model, eval_batches)) if eval_batches else None,
            stop_after=stop_after,
        )
        summary = {
            "stage": "sft",
            "steps": result.step,
            "train_loss": result.train_stats.get("loss"),
            "eval_nll": result.eval_stats.get("nll"),
            "train_examples": len(train_ex),
            "eval_examples": len(eval_ex),
            "truncation": stats.as_dict(),
            "skipped_steps": result.skipped_steps,
        }
        if not result.finished:
            return summary  # stopped early on purpose (a simulated crash): not complete
        run.replace_final(save_fn)
        if cfg.train.num_samples:
            run.write_samples(
                sample_responses(
                    model, tokenizer, eval_records or train_records, n=cfg.train.num_samples, seed=cfg.train.seed
                )
            )
        return run.complete(summary)
