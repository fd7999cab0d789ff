"""Direct preference methods on the tiny model: each learns an easy rule, the reference cache is
reused, and resume is exact."""

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.data import load_records
from alignlab.losses.preference import PREFERENCE_LOSSES
from alignlab.models.load import load_model
from alignlab.trainers import reference
from alignlab.trainers.dpo import PairSet, train_dpo
from alignlab.trainers.run import read_metrics

HYPER = {
    "cdpo": {"label_smoothing": 0.1},
    "robust": {"label_smoothing": 0.1},
    "simpo": {"beta": 2.0},
    "kto": {"data_kind": "unpaired"},
}


def pair_logps(model_path: str, data_path) -> tuple[torch.Tensor, ...]:
    """(chosen, rejected) seq_logps and response lengths of every training pair, one batch, no grad."""
    loaded = load_model(from_dict(ModelConfig, {"name_or_path": model_path}), for_training=False)
    pairs = PairSet(load_records(str(data_path), "preference").records, loaded.tokenizer, 64, 32)
    batch = pairs.batch(list(range(len(pairs))))
    with torch.no_grad():
        logps = reference.seq_logps(loaded.model.eval(), batch)  # (2B,)
    logps, lengths = logps.cpu(), batch["loss_mask"].sum(-1).float()
    B = len(pairs)
    return logps[:B], logps[B:], lengths[:B], lengths[B:]


def preference_accuracy(loss: str, policy, ref) -> float:
    """Fraction of pairs the policy prefers chosen: by implicit reward (log-ratio margin > 0) for
    reference-based losses, by mean per-token log-prob for the reference-free ones."""
    c, r, lc, lr = policy
    if PREFERENCE_LOSSES[loss].needs_reference:
        margin = (c - ref[0]) - (r - ref[1])  # exactly 0 for an untrained policy: counts as wrong
    else:
        margin = c / lc - r / lr
    return float((margin > 0).float().mean())


@pytest.mark.parametrize("loss", sorted(PREFERENCE_LOSSES))
def test_each_method_learns_to_prefer_chosen(tiny_dpo_config, preference_file, loss):
    cfg = tiny_dpo_config(loss=loss, **HYPER.get(loss, {}))
    summary = train_dpo(cfg)
    ref = pair_logps("tiny", preference_file)
    before = preference_accuracy(loss, ref, ref)
    after = preference_accuracy(loss, pair_logps(summary["final"], preference_file), ref)
    assert before <= 0.5  # the rule is not already known (chance or worse)
    assert after >= 0.9, f"{loss}: accuracy {before:.2f} -> {after:.2f}"
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margin", "logps/chosen"} <= set(rows[-1])
    if PREFERENCE_LOSSES[loss].needs_reference:
        assert "logratio/mean" in rows[-1]


def test_second_run_reads_the_reference_cache(tiny_dpo_config, monkeypatch):
    first = train_dpo(tiny_dpo_config(**{"train.max_steps": 3, "train.run_name": "a"}))
    assert first["reference"]["cache"] == "miss"

    def must_not_run(*a, **k):
        raise AssertionError("reference log-probs recomputed despite a cache entry")

    monkeypatch.setattr(reference, "compute_reference_logps", must_not_run)
    second = train_dpo(tiny_dpo_config(**{"train.max_steps": 3, "train.run_name": "b"}))
    assert second["reference"] == first["reference"] | {"cache": "hit"}
    a = [r["loss"] for r in read_metrics(first["run_dir"]) if r["split"] == "train"]
    b = [r["loss"] for r in read_metrics(second["run_dir"]) if r["split"] == "train"]
    assert a == b  # identical numbers whether computed or read back


@pytest.mark.parametrize("loss,lora", [("dpo", True), ("kto", False)])
def test_resume_is_exact(tiny_dpo_config, loss, lora):
    over = {
        "loss": loss,
        "train.max_steps": 8,
        "train.save_every": 4,
        "model.lora.enabled": lora,
        "model.lora.dropout": 0.1,
    }
    over.update(HYPER.get(loss, {}))
    straight = train_dpo(tiny_dpo_config(**over, **{"train.run_name": "straight"}))
    half = train_dpo(tiny_dpo_config(**over, **{"train.run_name": "resumed"}), stop_after=4)
    assert half["steps"] == 4 and "final" not in half
    resumed = train_dpo(tiny_dpo_config(**over, **{"train.run_name": "resumed", "train.resume": True}))
    assert resumed["reference"]["cache"] == "hit"
    a = [r["loss"] for r in read_metrics(straight["run_dir"]) if r["split"] == "train"]
    b = [r["loss"] for r in read_metrics(resumed["run_dir"]) if r["split"] == "train"]
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
