"""SFT on the tiny model: it learns, it saves and reloads exactly, and it resumes exactly."""

import json

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.models.load import load_model
from alignlab.trainers.run import read_metrics
from alignlab.trainers.sft import response_nll, train_sft


def _eval_batches(cfg, tokenizer):
    import logging

    from alignlab.data.collate import pad_examples
    from alignlab.data.tokenize import tokenize_sft
    from alignlab.trainers.common import load_split

    _, held = load_split(cfg.data, "sft", cfg.train.seed, logging.getLogger("t"))
    ex, _ = tokenize_sft(held, tokenizer, max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length)
    return [pad_examples(ex[i : i + 4], tokenizer.pad_token_id) for i in range(0, len(ex), 4)]


def test_sft_lowers_train_loss_and_heldout_nll_and_reloads_identically(tiny_sft_config):
    cfg = tiny_sft_config(**{"train.max_steps": 30, "train.num_samples": 1})
    before = load_model(cfg.model, seed=cfg.train.seed)
    with torch.no_grad():
        nll_before = response_nll(before.model, _eval_batches(cfg, before.tokenizer))["nll"]

    summary = train_sft(cfg)
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    assert summary["eval_nll"] < 0.6 * nll_before

    # the saved final model reproduces the held-out NLL (same logits)
    reloaded = load_model(from_dict(ModelConfig, {"name_or_path": summary["final"]}), for_training=False)
    with torch.no_grad():
        nll_after = response_nll(reloaded.model, _eval_batches(cfg, reloaded.tokenizer))["nll"]
    assert abs(nll_after - summary["eval_nll"]) < 1e-6
    samples = [json.loads(x) for x in open(f"{summary['run_dir']}/samples.jsonl")]
    assert len(samples) == 1 and "response" in samples[0]


@pytest.mark.parametrize("lora", [False, True])
def test_resume_is_exact(tiny_sft_config, lora):
    over = {"train.max_steps": 8, "train.save_every": 4, "model.lora.enabled": lora, "model.lora.dropout": 0.1}
    straight = train_sft(tiny_sft_config(**over, **{"train.run_name": "straight"}))
    half = train_sft(tiny_sft_config(**over, **{"train.run_name": "resumed"}), stop_after=4)
    assert half["steps"] == 4 and "final" not in half
    resumed = train_sft(tiny_sft_config(**over, **{"train.run_name": "resumed", "train.resume": True}))
    a = [r["loss"] for r in read_metrics(straight["run_dir"]) if r["split"] == "train"]
    b = [r["loss"] for r in read_metrics(resumed["run_dir"]) if r["split"] == "train"]
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    assert abs(straight["eval_nll"] - resumed["eval_nll"]) < 1e-6


def test_resume_refuses_a_different_config(tiny_sft_config):
    from alignlab.errors import CheckpointError, ConfigError

    train_sft(tiny_sft_config(), stop_after=2)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_sft(tiny_sft_config())
    with pytest.raises(CheckpointError, match="train.lr"):
        train_sft(tiny_sft_config(**{"train.resume": True, "train.lr": 1e-2}))


def test_keep_last_and_tensorboard(tiny_sft_config):
    from pathlib import Path

    summary = train_sft(
        tiny_sft_config(
            **{"train.max_steps": 5, "train.save_every": 1, "train.keep_last": 2, "train.tensorboard": True}
        )
    )
    ckpts = sorted(p.name for p in (Path(summary["run_dir"]) / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000005"]
    events = list((Path(summary["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
