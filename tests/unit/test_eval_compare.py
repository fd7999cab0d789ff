"""Judge and proxy win rates, the judge's agreement with gold, the alignment tax and several
objectives: each number against a hand computation on planted rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignlab import runs
from alignlab.errors import ConfigError
from alignlab.eval import compare, evaluate, stats
from alignlab.eval.objectives import load_objectives, parse_objectives

T_975_DF2 = 4.302652729911275  # Student t quantile, p = 0.975, 2 degrees of freedom (tables)


def _row(prompt, gold, **kw):
    return {"prompt": prompt, "response": f"r {prompt} {gold}", "gold": gold, **kw}


def _judged():
    """Baseline: two responses per prompt (p2 a third, unmatched); the policy: two per prompt, judged."""
    base = [_row("p0", 0.0), _row("p0", 1.0), _row("p1", 0.5), _row("p1", 0.5)]
    base += [_row("p2", 0.2), _row("p2", 0.9), _row("p2", 0.3)]
    pol = [
        _row("p0", 1.0, judge=0.8, judge_consistent=True),  # vs 0.0: gold win, judge win -> agree
        _row("p0", 0.0, judge=0.7, judge_consistent=False),  # vs 1.0: gold loss, judge win -> disagree
        _row("p1", 0.5, judge=0.5, judge_consistent=True),  # vs 0.5: gold tie -> left out of agreement
        _row("p1", 1.0, judge=0.3, judge_consistent=True),  # vs 0.5: gold win, judge loss -> disagree
        _row("p2", 0.9, judge=0.52, judge_consistent=False),  # vs 0.2: within the margin: judge tie -> ½
        _row("p2", 0.1, judge=0.1, judge_consistent=True),  # vs 0.9: gold loss, judge loss -> agree
    ]
    return base, pol


def test_index_pairs_match_the_kth_response_of_each_prompt():
    base, pol = _judged()
    assert compare.index_pairs(pol, base) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    shuffled = [pol[4], pol[0], pol[2], pol[5], pol[1], pol[3]]  # prompts interleaved, order within each kept
    assert compare.index_pairs(shuffled, base) == [(0, 4), (1, 0), (2, 2), (3, 5), (4, 1), (5, 3)]
    assert compare.index_pairs([_row("p9", 0.0)], base) == []


def test_judge_win_rate_and_agreement_by_hand():
    base, pol = _judged()
    out = compare.judge_summary(pol, base, margin=0.05)
    assert out["pairs"] == 6
    assert out["pair_outcomes"] == {"wins": 2, "ties": 2, "losses": 2}
    assert out["mean_prob"] == pytest.approx((0.8 + 0.7 + 0.5 + 0.3 + 0.52 + 0.1) / 6)
    # per prompt: p0 (1 + 1)/2 = 1, p1 (½ + 0)/2 = ¼, p2 (½ + 0)/2 = ¼
    wr = out["win_rate"]
    assert wr["win_rate"] == pytest.approx(0.5) and wr["n"] == 3
    assert (wr["wins"], wr["ties"], wr["losses"]) == (1, 0, 0)  # the ¼ prompts are in none of them
    assert wr["wilson"] == pytest.approx(list(stats.wilson_interval(1.5, 3)))
    # agreement over the 5 pairs gold decides: 1, 0, 0, ½, 1
    ag = out["agreement"]
    assert ag["agreement"] == pytest.approx(2.5 / 5) and ag["n"] == 5 and ag["gold_ties"] == 1
    assert ag["wilson"] == pytest.approx(list(stats.wilson_interval(2.5, 5)))
    assert out["position_consistency"] == pytest.approx(4 / 6)
    # without the margin the 0.52 pair is a judge win: p2 = (1 + 0)/2, agreement 3/5
    plain = compare.judge_summary(pol, base)
    assert plain["win_rate"]["win_rate"] == pytest.approx((1 + 0.25 + 0.5) / 3)
    assert plain["agreement"]["agreement"] == pytest.approx(3 / 5)
    assert compare.judge_summary([_row("p0", 1.0)], base) is None  # no judgement, no entry


def test_evaluate_run_reports_judge_and_proxy_win_rates(tmp_path):
    base, pol = _judged()
    for r, s in zip(base, [1.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]):
        r["score"] = s
    for r, s in zip(pol, [2.0, 2.0, 5.0, 5.0, 0.0, 0.0]):
        r["score"] = s
    out = evaluate.evaluate_run(tmp_path / "run", policies={"sft": base, "x": pol}, judge="tiny", judge_tie_margin=0.05)
    x = out["policies"]["x"]
    assert x["judge"] == json.loads(json.dumps(compare.judge_summary(pol, base, margin=0.05)))
    assert out["judge"] == {"model": "tiny", "tie_margin": 0.05}
    # proxy, every (policy, baseline) pair of a prompt: p0 (W, L, W, L) = ½, p1 all W = 1, p2 all ties = ½
    pw = x["proxy_win_rate"]
    assert pw["win_rate"] == pytest.approx((0.5 + 1 + 0.5) / 3) and (pw["wins"], pw["ties"], pw["losses"]) == (1, 2, 0)
    assert out["policies"]["sft"]["proxy_win_rate"] is None and out["policies"]["sft"]["judge"] is None
    samples = runs.StageFolder(tmp_path / "run" / "eval").read_samples()
    assert [s["judge"] for s in samples if s["policy"] == "x"] == [0.8, 0.7, 0.5, 0.3, 0.52, 0.1]


def test_no_judge_and_no_proxy_leave_nulls(tmp_path):
    out = evaluate.evaluate_run(tmp_path, policies={"sft": [_row("p", 0.0)], "x": [_row("p", 1.0)]}, write=False)
    x = out["policies"]["x"]
    assert x["judge"] is None and x["proxy_win_rate"] is None and x["heldout"] is None and x["objectives"] is None
    assert out["judge"] is None and out["heldout"] is None and out["objectives"] is None and out["lm_eval"] is None


def test_alignment_tax_by_hand(tmp_path):
    heldout = {
        "sft": [{"nll": 2.0, "tokens": 2}, {"nll": 6.0, "tokens": 3}, {"nll": 1.0, "tokens": 1}],
        "ppo": [{"nll": 3.0, "tokens": 2}, {"nll": 9.0, "tokens": 3}, {"nll": 1.0, "tokens": 1}],
    }
    policies = {"sft": [_row("p", 0.0)], "ppo": [_row("p", 1.0)]}
    out = evaluate.evaluate_run(tmp_path, policies=policies, heldout=heldout, heldout_source="demo:sft", write=False)
    sft, ppo = out["policies"]["sft"]["heldout"], out["policies"]["ppo"]["heldout"]
    # per-token NLL per example: sft 1, 2, 1; ppo 1.5, 3, 1
    assert sft["nll"]["mean"] == pytest.approx(4 / 3) and ppo["nll"]["mean"] == pytest.approx(5.5 / 3)
    assert sft["nll_pooled"] == pytest.approx(9 / 6) and ppo["nll_pooled"] == pytest.approx(13 / 6)
    assert sft["perplexity"] == pytest.approx(math.exp(1.5))
    assert (ppo["n_examples"], ppo["n_tokens"]) == (3, 6)
    assert sft["tax"] is None
    # tax: differences 0.5, 1, 0 -> mean 0.5, sd 0.5, se 0.5/√3, t interval mean ± t(0.975, 2)·se
    tax = ppo["tax"]
    assert tax["mean"] == pytest.approx(0.5) and tax["std"] == pytest.approx(0.5)
    half = T_975_DF2 * 0.5 / math.sqrt(3)
    assert tax["t_interval"] == pytest.approx([0.5 - half, 0.5 + half], abs=1e-6)
    assert tax["significant"] is False  # 3 examples: the interval reaches below 0
    assert out["heldout"] == {"source": "demo:sft", "n_examples": 3}


def test_alignment_tax_pairs_examples_and_skips_empty_ones():
    heldout = {
        "sft": [{"nll": 1.0, "tokens": 1}, {"nll": 0.0, "tokens": 0}, {"nll": 2.0, "tokens": 1}],
        "dpo": [{"nll": 2.0, "tokens": 1}, {"nll": 5.0, "tokens": 1}, {"nll": 3.0, "tokens": 1}],
    }
    out = compare.heldout_summary(heldout, "sft")
    assert out["sft"]["n_examples"] == 2 and out["dpo"]["n_examples"] == 3
    assert out["dpo"]["tax"]["n"] == 2 and out["dpo"]["tax"]["mean"] == pytest.approx(1.0)  # (1 + 1)/2
    with pytest.raises(ValueError, match="same examples"):
        compare.heldout_summary({"sft": heldout["sft"], "dpo": heldout["dpo"][:2]}, "sft")


def test_objectives_mean_and_gain_by_hand(tmp_path):
    def exclaims(prompts, responses):
        return [float(r.count("!")) for r in responses]

    sft = [
        {"prompt": "a", "response": "one two", "gold": 0.0},
        {"prompt": "a", "response": "one two three four", "gold": 0.0},
        {"prompt": "b", "response": "x!", "gold": 0.0, "objectives": {"words": 10.0}},  # given: kept
    ]
    pol = [
        {"prompt": "a", "response": "w! w! w!", "gold": 1.0},
        {"prompt": "b", "response": "w w w w w!", "gold": 1.0},
    ]
    out = evaluate.evaluate_run(
        tmp_path / "r", policies={"sft": sft, "pol": pol}, objectives={"words": "length(scale=1)", "bang": exclaims}
    )
    assert out["objectives"] == {"words": "length(scale=1)", "bang": "exclaims"}
    s, p = out["policies"]["sft"]["objectives"], out["policies"]["pol"]["objectives"]
    assert s["words"]["mean"]["mean"] == pytest.approx((2 + 4 + 10) / 3) and s["words"]["gain"] is None
    assert p["words"]["mean"]["mean"] == pytest.approx((3 + 5) / 2)
    # gain per prompt: a: 3 − (2 + 4)/2 = 0; b: 5 − 10 = −5 -> mean −2.5
    assert p["words"]["gain"]["mean"] == pytest.approx(-2.5) and p["words"]["gain"]["n"] == 2
    # bang: a: 3 − 0 = 3; b: 1 − 1 = 0 -> 1.5
    assert p["bang"]["mean"]["mean"] == pytest.approx(2.0) and p["bang"]["gain"]["mean"] == pytest.approx(1.5)
    on_disk = json.loads((tmp_path / "r" / "eval" / "eval.json").read_text())
    assert on_disk["policies"]["pol"]["objectives"] == json.loads(json.dumps(p))
    assert np.isclose(on_disk["policies"]["sft"]["objectives"]["bang"]["mean"]["mean"], 1 / 3)


def test_parse_objectives():
    assert parse_objectives(["helpful=demo", "concise", "lower=char_fraction(chars=abc)"]) == {
        "helpful": "demo",
        "concise": "concise",
        "lower": "char_fraction(chars=abc)",
    }
    assert parse_objectives(["char_fraction(chars=abc)"]) == {"char_fraction(chars=abc)": "char_fraction(chars=abc)"}
    assert parse_objectives({"h": "sentiment+0.5*concise"}) == {"h": "sentiment+0.5*concise"}
    with pytest.raises(ConfigError, match="'a' is given twice"):
        parse_objectives(["a=demo", "a=concise"])
    with pytest.raises(ConfigError, match="empty gold spec"):
        parse_objectives({"a": " "})
    with pytest.raises(ConfigError, match="objectives': x=nosuchgold"):
        load_objectives(["x=nosuchgold"])


def test_eval_config_takes_the_new_keys_from_the_command_line():
    from alignlab.config import EvalConfig, load_config

    cfg = load_config(
        EvalConfig, None, ["objectives=a=demo,concise", "lm_eval=hellaswag,arc_easy", "judge=tiny", "heldout_limit=0"]
    )
    assert cfg.objectives == ["a=demo", "concise"] and cfg.lm_eval == ["hellaswag", "arc_easy"]
    assert cfg.judge == "tiny" and cfg.heldout_limit == 0
    assert load_config(EvalConfig).judge is None  # off unless asked for
    with pytest.raises(ConfigError, match="judge_tie_margin"):
        load_config(EvalConfig, None, ["judge_tie_margin=0.5"])
    with pytest.raises(ConfigError, match="given twice"):
        load_config(EvalConfig, None, ["objectives=a=demo,a=concise"])
