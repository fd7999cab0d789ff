"""The pipeline table: per-stage overrides, wiring from upstream outputs, the README's generated table."""

from pathlib import Path

import pytest

from alignlab.errors import ConfigError
from alignlab.pipeline import (
    README_BEGIN,
    README_END,
    STAGES,
    plan,
    profile_stages,
    split_overrides,
    stage_table_markdown,
    wire,
)
from alignlab.profiles import load_profile


def test_overrides_are_addressed_per_stage_and_a_bare_key_goes_to_every_stage_that_has_it():
    out = split_overrides(["dpo.loss=ipo", "sft.train.lr=1e-4", "train.max_steps=2"], ["sft", "dpo", "eval"])
    assert out["dpo"] == ["loss=ipo", "train.max_steps=2"]
    assert out["sft"] == ["train.lr=1e-4", "train.max_steps=2"]
    assert out["eval"] == []  # eval has no train.max_steps


@pytest.mark.parametrize(
    "item,message",
    [
        ("dpo.los=ipo", r"did you mean 'loss'"),
        ("dpp.loss=ipo", r"did you mean 'dpo.loss'"),
        ("ppo.beta=0.1", r"stage 'ppo' is not in this run"),
        ("train.lrr=1", r"did you mean 'train.lr'"),
        ("noequals", r"key=value"),
    ],
)
def test_bad_overrides_name_the_closest_key(item, message):
    with pytest.raises(ConfigError, match=message):
        plan(load_profile("tiny"), [item], stages=["sft", "dpo"])


def test_inputs_are_wired_from_upstream_outputs_unless_the_section_keeps_its_own():
    section, wired = wire(
        "ppo",
        {"reward": {"source": "house_style", "kwargs": ["a=1"]}},
        {"sft:final": Path("r/sft/final"), "reward:final": Path("r/reward/final")},
    )
    assert wired == {"model.name_or_path": "r/sft/final", "reward.source": "r/reward/final"}
    assert section["reward"] == {"source": "r/reward/final"}  # the rule's own kwargs go with it
    section, wired = wire(
        "ppo", {"inputs": {"reward": "own"}, "reward": {"source": "house_style"}}, {"reward:final": Path("x")}
    )
    assert wired == {} and section["reward"]["source"] == "house_style" and "inputs" not in section
    with pytest.raises(ConfigError, match="did you mean 'reward'"):
        wire("ppo", {"inputs": {"rewrd": "own"}}, {})


def test_every_profile_section_is_a_stage_in_table_order():
    assert profile_stages(load_profile("quick")) == ["sft", "label", "reward", "dpo", "ppo", "eval", "report"]
    with pytest.raises(ConfigError, match="did you mean 'dpo'"):
        profile_stages({"dop": {}})


def test_plan_wires_each_stage_to_the_ones_before_it(tmp_path):
    planned = plan(load_profile("quick"), [f"output_dir={tmp_path}"])
    by = {p.name: p for p in planned}
    run = tmp_path / "quick"
    assert by["reward"].cfg.model.name_or_path == str(run / "sft" / "final")
    assert by["dpo"].cfg.data.train == str(run / "label" / "preferences.jsonl")
    assert by["ppo"].cfg.reward.source == str(run / "reward" / "final")
    assert by["eval"].cfg.proxy == str(run / "reward" / "final")


def test_the_readme_stage_table_is_the_generated_one():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert block == stage_table_markdown(), "README's stage table is stale: run `python scripts/update_readme.py`"
    for name in STAGES:
        assert f"`alignlab {name}`" in block


def test_full_profile_plans_every_rlhf_stage_on_the_gpu_defaults(tmp_path):
    """`--profile full`: a hub-id model, full fine-tuning (no LoRA), dtype auto (bf16 on a GPU), checkpoints eval reads."""
    planned = plan(load_profile("full"), [f"output_dir={tmp_path}"])
    names = [p.name for p in planned]
    assert names == ["sft", "label", "reward", "dpo", "ppo", "eval", "report"]
    cfgs = {p.name: p.cfg for p in planned}
    assert cfgs["sft"].model.name_or_path == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert not cfgs["sft"].model.lora.enabled and cfgs["sft"].model.dtype == "auto"
    for name in cfgs["eval"].checkpoints:  # every checkpoint eval samples is kept by its stage
        assert cfgs[name].train.keep_last * cfgs[name].train.save_every >= cfgs[name].train.max_steps
    other = plan(load_profile("full"), [f"output_dir={tmp_path}", "model.name_or_path=/models/mine"])
    assert next(p for p in other if p.name == "sft").cfg.model.name_or_path == "/models/mine"
