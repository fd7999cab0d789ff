"""Results do not depend on how a step's batch is split into micro-batches: one batch of 8 and four
micro-batches of 2 give the same loss and gradient norm, for SFT (a per-token loss over responses of
different lengths, so the micro-batches hold different numbers of tokens) and DPO (per pair)."""

import pytest

from alignlab.trainers.run import read_metrics


def _first_step(summary):
    row = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"][0]
    return row["loss"], row["grad_norm"]


SPLITS = {"whole": ["train.batch_size=8", "train.grad_accum=1"], "micro": ["train.batch_size=2", "train.grad_accum=4"]}


def test_sft_loss_and_gradient_do_not_depend_on_the_split(tiny_sft_config):
    from alignlab.trainers.sft import train_sft

    out = {}
    for name, over in SPLITS.items():
        kw = dict(o.split("=") for o in over)
        out[name] = _first_step(
            train_sft(tiny_sft_config(**kw, **{"train.max_steps": 1, "train.run_name": name, "train.max_grad_norm": 0}))
        )
    (l8, g8), (l2, g2) = out["whole"], out["micro"]
    assert l2 == pytest.approx(l8, abs=1e-5) and g2 == pytest.approx(g8, rel=1e-4), out


def test_sft_micro_batches_hold_different_token_counts(tiny_sft_config):
    """The check above is not vacuous: equal weighting of the four micro-batches would give another loss."""
    import torch

    from alignlab.data import load_records
    from alignlab.data.collate import pad_examples
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.models.load import load_model
    from alignlab.trainers.loop import DataOrder

    cfg = tiny_sft_config()
    loaded = load_model(cfg.model, seed=0)
    records = load_records(cfg.data.train, "sft").records
    examples, _ = tokenize_sft(records, loaded.tokenizer, max_length=96, max_prompt_length=48)
    order = DataOrder(len(examples), 2, 0)
    weights = [pad_examples([examples[i] for i in order.batch(k)], 0)["loss_weight"] for k in range(4)]
    assert len(set(weights)) > 1, weights
    del torch


def test_dpo_loss_and_gradient_do_not_depend_on_the_split(tiny_dpo_config):
    from alignlab.trainers.dpo import train_dpo

    out = {}
    for name, over in SPLITS.items():
        kw = dict(o.split("=") for o in over)
        out[name] = _first_step(
            train_dpo(
                tiny_dpo_config(
                    **kw,
                    **{"train.max_steps": 1, "train.run_name": name, "train.max_grad_norm": 0, "data.packing": False},
                )
            )
        )
    (l8, g8), (l2, g2) = out["whole"], out["micro"]
    assert l2 == pytest.approx(l8, abs=1e-5) and g2 == pytest.approx(g8, rel=1e-4), out
