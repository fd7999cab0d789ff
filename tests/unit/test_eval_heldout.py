"""The alignment tax's NLL pass on the tiny model: per-example NLL equals a full-logits computation."""

from __future__ import annotations

import pytest
import torch

from alignlab.data import load_records, split_records
from alignlab.data.tokenize import tokenize_sft
from alignlab.eval.heldout import heldout_nll, heldout_records


def test_heldout_records_are_the_sft_split_held_out_share():
    records = load_records("demo:sft", "sft").records
    held = split_records(records, 0.1, 0)[1]
    got = heldout_records("demo:sft", fraction=0.1, limit=5, seed=0)
    assert [r.where for r in got] == [r.where for r in held[:5]]
    assert len(heldout_records("demo:sft", fraction=0.0, limit=200, seed=0)) == len(records)


def test_heldout_nll_equals_the_log_softmax_of_full_logits():
    from alignlab.models.presets import build_tiny

    model, tok = build_tiny(seed=0)
    records = load_records("demo:sft", "sft", limit=5).records
    rows = heldout_nll(model, tok, records, max_length=64, max_prompt_length=32, batch_size=2)  # batches of 2, padded
    examples, _ = tokenize_sft(records, tok, max_length=64, max_prompt_length=32)
    assert [r["where"] for r in rows] == [r.where for r in records]
    for row, ex in zip(rows, examples):
        ids = torch.tensor([ex.input_ids])  # (1, T), one example alone: no padding
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)  # (T-1, V)
        targets = ids[0, 1:]
        picked = logp[torch.arange(len(targets)), targets]  # (T-1,)
        n_prompt = len(ex.prompt_ids)
        want = -picked[n_prompt - 1 :].sum().item()  # the response tokens (answer + EOS)
        assert row["tokens"] == len(ex.response_ids)
        assert row["nll"] == pytest.approx(want, rel=1e-4)


def test_the_alignment_tax_reads_the_sft_stages_own_split_from_its_config(tmp_path):
    """The SFT stage trained with seed 5 and a limit: eval (seed 0) scores exactly that stage's held-out records."""
    import logging

    from alignlab.config import EvalConfig, SFTConfig, from_dict, to_dict
    from alignlab.config.parse import save_config
    from alignlab.eval.stage import _heldout_records
    from alignlab.trainers.common import load_split

    sft = from_dict(
        SFTConfig, {"data": {"train": "demo:sft", "eval_fraction": 0.2, "limit": 100}, "train": {"seed": 5}}
    )
    run = tmp_path / "runs" / "r"
    (run / "sft").mkdir(parents=True)
    save_config(sft, run / "sft" / "config.yaml")
    cfg = from_dict(EvalConfig, {"heldout_limit": 50, "seed": 0})
    got = _heldout_records(cfg, run)
    want = load_split(sft.data, "sft", 5, logging.getLogger("t"))[1]
    assert [r.where for r in got] == [r.where for r in want][:50] and len(got) == 20
    plain = _heldout_records(cfg, tmp_path / "no-run")  # no SFT stage: the knobs' split
    assert [r.where for r in plain] != [r.where for r in got]
    assert to_dict(cfg)["heldout_data"] == "demo:sft"
