"""Iterated RLHF (a profile's ``rounds: N``): round names and folders, the plan and its wiring,
per-round overrides, the label stage's prompt slices and the reward models' agreement with gold."""

from pathlib import Path

import pytest

from alignlab.config import to_dict
from alignlab.errors import ConfigError
from alignlab.eval.evaluate import rm_gold_agreement
from alignlab.feedback.stage import round_prompts
from alignlab.pipeline import plan, profile_stages, round_plan, rounds_of, run_pipeline, split_overrides
from alignlab.profiles import load_profile
from alignlab.runs import round_name, run_path, split_round, stage_folder

QUICK_TODAY = ["sft", "label", "reward", "dpo", "ppo", "eval", "report"]


def test_round_names_and_folders():
    assert split_round("ppo@2") == ("ppo", 2) and split_round("best-of-n@12") == ("best-of-n", 12)
    for plain in ("ppo", "ppo@1", "ppo@02", "ppo@x", "@3", "a@b@c"):
        assert split_round(plain) == (plain, 1), plain  # not a round suffix: the name itself, round 1
    assert split_round("exp@1@3") == ("exp@1", 3)
    assert round_name("ppo", 1) == "ppo" and round_name("ppo", 3) == "ppo@3"
    assert run_path("runs", "tiny@3") == Path("runs/tiny")  # round 3 of run tiny lives in tiny's folder
    assert stage_folder("runs", "tiny@3", "ppo").path == Path("runs/tiny/ppo@3")
    assert stage_folder("runs", "tiny", "ppo").path == Path("runs/tiny/ppo")


@pytest.mark.parametrize("profile", ["quick", "tiny"])
def test_one_round_plans_exactly_what_the_profile_planned_before(tmp_path, profile):
    base = load_profile(profile)
    today = plan(base, [f"output_dir={tmp_path}"])
    names = [n for n in profile_stages(base)]
    if profile == "quick":
        assert names == QUICK_TODAY
    for variant in (
        plan(base, [f"output_dir={tmp_path}", "rounds=1"]),
        plan({**base, "rounds": 1}, [f"output_dir={tmp_path}"]),
    ):
        assert [p.name for p in variant] == [p.name for p in today] == names
        for a, b in zip(variant, today):
            assert to_dict(a.cfg) == to_dict(b.cfg) and a.wired == b.wired, a.name


def test_three_rounds_repeat_label_reward_dpo_ppo_each_wired_to_the_round_before(tmp_path):
    planned = plan(load_profile("quick"), [f"output_dir={tmp_path}", "rounds=3"])
    later = [f"{s}@{r}" for r in (2, 3) for s in ("label", "reward", "dpo", "ppo")]
    assert [p.name for p in planned] == QUICK_TODAY[:5] + later + ["eval", "report"]
    by = {p.name: p for p in planned}
    run = tmp_path / "quick"
    assert by["label@2"].cfg.model.name_or_path == str(run / "ppo" / "final")  # the newest policy samples
    assert by["label@3"].cfg.model.name_or_path == str(run / "ppo@2" / "final")
    assert by["label@3"].cfg.run_name == "quick@3"
    # the reward model: from the SFT model again, on every label so far (label@3's pool)
    assert by["reward@3"].cfg.model.name_or_path == str(run / "sft" / "final")
    assert by["reward@3"].cfg.data.train == str(run / "label@3" / "preferences-all.jsonl")
    assert by["reward@3"].cfg.train.run_name == "quick@3"
    # PPO and DPO continue from their own previous round; PPO on the round's reward model, DPO on its new pairs
    assert by["ppo@3"].wired == {
        "model.name_or_path": str(run / "ppo@2" / "final"),
        "reward.source": str(run / "reward@3" / "final"),
        "reference": str(run / "sft" / "final"),  # the KL penalty stays against SFT
    }
    assert by["ppo"].cfg.reference is None and "reference" not in by["ppo"].wired
    assert by["dpo@2"].wired == {
        "model.name_or_path": str(run / "dpo" / "final"),
        "data.train": str(run / "label@2" / "preferences.jsonl"),
    }
    assert by["eval"].cfg.proxy == str(run / "reward@3" / "final")  # the newest reward model
    assert by["eval"].cfg.run_name == "quick"


def test_a_dpo_only_run_labels_the_newest_dpo_policy_samples(tmp_path):
    tiny = load_profile("tiny")
    profile = {k: tiny[k] for k in ("sft", "label", "dpo", "eval")} | {"rounds": 2}
    by = {p.name: p for p in plan(profile, [f"output_dir={tmp_path}"])}
    assert list(by) == ["sft", "label", "dpo", "label@2", "dpo@2", "eval"]
    assert by["label@2"].cfg.model.name_or_path == str(tmp_path / "tiny" / "dpo" / "final")  # online DPO


def test_stage_prefixed_overrides_reach_every_round_or_one_round():
    stages = ["sft", "ppo", "ppo@2", "ppo@3"]
    out = split_overrides(["ppo.beta=0.3", "ppo@3.train.lr=1e-5"], stages)
    assert out["ppo"] == ["beta=0.3"] and out["ppo@2"] == ["beta=0.3"]
    assert out["ppo@3"] == ["beta=0.3", "train.lr=1e-5"] and out["sft"] == []
    with pytest.raises(ConfigError, match="stage 'ppo@4' is not in this run"):
        split_overrides(["ppo@4.beta=1"], stages)


@pytest.mark.parametrize(
    "profile,overrides,message",
    [
        ({"rounds": 2}, ["rounds=0"], r"'rounds' must be a whole number >= 1.*'0'"),
        ({"rounds": "two"}, [], r"'rounds' must be a whole number >= 1.*'two'"),
        ({"rounds": True}, [], r"'rounds' must be a whole number"),
        ({}, ["rounds=1.5"], r"'rounds' must be a whole number"),
    ],
)
def test_bad_rounds_are_one_clear_error(profile, overrides, message):
    with pytest.raises(ConfigError, match=message):
        rounds_of(profile, overrides)


def test_rounds_from_the_command_line_win_and_leave_the_other_overrides():
    assert rounds_of({"rounds": 2}, ["train.max_steps=3", "rounds=4"]) == (4, ["train.max_steps=3"])
    assert rounds_of({}, ["dpo.loss=ipo"]) == (1, ["dpo.loss=ipo"])


def test_rounds_need_a_label_stage_and_a_policy_trained_on_labels():
    with pytest.raises(ConfigError, match="needs a 'label' section"):
        round_plan(["sft", "ppo", "eval"], 2)
    with pytest.raises(ConfigError, match="'ppo' or 'dpo' section"):
        round_plan(["sft", "label", "reward", "eval"], 2)
    assert round_plan(["sft", "ppo", "eval"], 1) == ["sft", "ppo", "eval"]  # one round: no requirement


def test_from_names_a_stage_of_a_later_round(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("rounds: 2\nsft: {train: {run_name: p}}\nlabel: {run_name: p}\nppo: {train: {run_name: p}}\n")
    with pytest.raises(ConfigError, match=r"--from ppo@3: not a stage of this run.*'ppo@2'"):
        run_pipeline(str(profile), [f"output_dir={tmp_path}"], from_stage="ppo@3")


def test_each_round_labels_the_next_slice_of_the_prompts_wrapping_around(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(5)))
    assert round_prompts(str(data), 2, 2) == ["p2", "p3"]
    assert round_prompts(str(data), 2, 3) == ["p4", "p0"]  # past the end: from the start again
    assert round_prompts(str(data), None, 3) == [f"p{i}" for i in range(5)]  # no limit: every prompt each round


def test_reward_model_agreement_with_gold_counts_pairs_of_responses_to_one_prompt():
    rows = [
        {"prompt": "a", "gold": 1.0},
        {"prompt": "a", "gold": 2.0},
        {"prompt": "a", "gold": 3.0},
        {"prompt": "b", "gold": 0.0},
        {"prompt": "b", "gold": 0.0},  # a gold tie: left out
        {"prompt": "c", "gold": 5.0},  # alone: no pair
        {"prompt": "d", "gold": 1.0},
        {"prompt": "d", "gold": 2.0},
    ]
    # a: (1,2) agree 1, (1,3) agree 1, (2,3) disagree 0; d: the scores tie, 1/2 -> (1 + 1 + 0 + 0.5) / 4
    scores = [0.1, 0.9, 0.5, 4.0, -4.0, 7.0, 3.0, 3.0]
    assert rm_gold_agreement(rows, scores) == {"agreement": 0.625, "pairs": 4, "gold_ties": 1}
    assert rm_gold_agreement(rows, [-s for s in scores])["agreement"] == 0.375  # (0 + 0 + 1 + 0.5) / 4
    assert rm_gold_agreement(rows[3:6], [0.0, 1.0, 2.0]) == {"agreement": None, "pairs": 0, "gold_ties": 1}
