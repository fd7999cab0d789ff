"""The monitors an RL stage runs on every rollout fire on planted failures (a WARNING naming the
monitor, its value, the threshold and the step; the metric as computed by hand), stay quiet on a
normal rollout, warn once, and survive a checkpoint; a tiny PPO run logs them."""

from __future__ import annotations

import logging

import pytest
import torch

from alignlab.config import PPOConfig, load_config
from alignlab.config.sections import MonitorConfig
from alignlab.errors import ConfigError
from alignlab.trainers.monitoring import TrainingMonitors

NORMAL = [
    "Paris is the capital of France and sits on the river Seine.",
    "The capital of France is Paris, a city on the Seine with many museums.",
    "To boil an egg, cover it with cold water, bring it to a boil and wait nine minutes.",
    "Put the egg in boiling water for about nine minutes, then cool it in cold water.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Plants use sunlight to make sugar from water and air, giving off oxygen.",
]
PROMPTS = ["capital of France?", "capital of France?", "boil an egg?", "boil an egg?", "plants?", "plants?"]
START = {"score": 0.1, "response_length": 10.0, "entropy": 2.0}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger="test-monitors")
    return logging.getLogger("test-monitors")


def test_a_normal_diverse_rollout_keeps_every_monitor_quiet(log, caplog):
    mon = TrainingMonitors(MonitorConfig(baseline_steps=1))
    for step in (1, 2, 3):
        out = mon.measure(PROMPTS, NORMAL, k=2, stats=dict(START))
        mon.warn(step, log)
    assert out["monitor/repetition"] == 0.0  # no word 3-gram repeats inside any of these answers
    assert out["monitor/length_drift"] == pytest.approx(1.0) and out["monitor/entropy_collapse"] == pytest.approx(1.0)
    assert 0 < out["monitor/diversity"] < 0.8
    assert "gold" not in out and "monitor/proxy_gold_gap" not in out  # no gold configured
    assert _warnings(caplog) == [] and mon.fired == {}


def test_responses_that_repeat_one_word_fire_repetition(log, caplog):
    mon = TrainingMonitors(MonitorConfig())
    looping = ["great great great great great great"] * 2 + ["yes yes yes yes"] * 2  # 4 trigrams 1 unique; 2 of 1
    out = mon.measure(["p1", "p2", "p3", "p4"], looping, k=1, stats=dict(START))
    mon.warn(7, log)
    # per response: 1 − unique/total trigrams = 1 − 1/4 = 0.75 (six words) and 1 − 1/2 = 0.5 (four words)
    assert out["monitor/repetition"] == pytest.approx((0.75 + 0.75 + 0.5 + 0.5) / 4)
    [msg] = [m for m in _warnings(caplog) if "repetition" in m]
    assert "monitor repetition fired at step 7" in msg and "0.625" in msg and "threshold 0.3" in msg


def test_the_same_text_for_every_sample_of_a_prompt_fires_diversity(log, caplog):
    mon = TrainingMonitors(MonitorConfig())
    same = [NORMAL[0]] * 3 + [NORMAL[2]] * 3  # two prompts, k = 3, each prompt's samples identical
    out = mon.measure(["a"] * 3 + ["b"] * 3, same, k=3, stats=dict(START))
    mon.warn(2, log)
    assert out["monitor/diversity"] == 1.0  # Jaccard of identical n-gram sets
    [msg] = _warnings(caplog)
    assert msg.startswith("monitor diversity fired at step 2: value 1 crossed the threshold 0.8")
    # the same six texts as three prompts with two *different* answers each are not a collapse
    mixed = [NORMAL[0], NORMAL[2], NORMAL[2], NORMAL[4], NORMAL[4], NORMAL[0]]
    assert TrainingMonitors(MonitorConfig()).measure(PROMPTS, mixed, k=2, stats=dict(START))["monitor/diversity"] < 0.2


def test_length_and_entropy_drifts_against_the_first_rollouts_warn_once(log, caplog):
    mon = TrainingMonitors(MonitorConfig(baseline_steps=2))
    for step, (length, entropy) in enumerate([(8.0, 2.2), (12.0, 1.8)], 1):  # the start: mean 10 tokens, 2.0 nats
        out = mon.measure(PROMPTS, NORMAL, k=2, stats={"response_length": length, "entropy": entropy})
        mon.warn(step, log)
        assert "monitor/length_drift" not in out  # nothing to compare with yet
    out = mon.measure(PROMPTS, NORMAL, k=2, stats={"response_length": 30.0, "entropy": 0.4})
    mon.warn(3, log)
    assert out["monitor/length_drift"] == pytest.approx(3.0) and out["monitor/entropy_collapse"] == pytest.approx(0.2)
    out = mon.measure(PROMPTS, NORMAL, k=2, stats={"response_length": 40.0, "entropy": 0.2})
    mon.warn(4, log)  # still firing: no second warning
    assert out["monitor/length_drift"] == pytest.approx(4.0)
    warned = _warnings(caplog)
    assert len(warned) == 2 and mon.fired == {"length_drift": 3, "entropy_collapse": 3}
    assert any("length_drift fired at step 3: value 3 crossed the threshold 2" in m for m in warned)
    assert any("entropy_collapse fired at step 3: value 0.2 crossed the threshold 0.25" in m for m in warned)


def test_proxy_rising_while_gold_turns_down_fires_the_gap(log, caplog):
    golds = iter([0, 1, 2, 3, 4, 5, 4, 3, 2, 1])  # gold peaks at the 6th rollout, then falls; the proxy rises

    def gold_fn(prompts, responses):
        g = next(golds)
        return [g] * len(responses)

    mon = TrainingMonitors(MonitorConfig(baseline_steps=2), gold_fn=gold_fn)
    gaps = {}
    for step in range(1, 11):
        out = mon.measure(PROMPTS, NORMAL, k=2, stats={**START, "score": 0.1 * step})
        mon.warn(step, log)
        assert out["gold"] == mon.gold[-1]
        assert ("monitor/proxy_gold_gap" in out) == (step >= 8)  # from 4 × baseline_steps rollouts on
        gaps[step] = out.get("monitor/proxy_gold_gap")
    # trailing means over 2 rollouts: gold 0, .5, 1.5, 2.5, 3.5, 4.5, 4.5, 3.5, 2.5, 1.5 (peak 4.5, min 0)
    assert gaps[8] == pytest.approx((4.5 - 3.5) / 4.5)  # 0.22: quiet
    assert gaps[9] == pytest.approx((4.5 - 2.5) / 4.5)  # 0.44 > 0.3 while the proxy rose: fires
    assert gaps[10] == pytest.approx((4.5 - 1.5) / 4.5)
    [msg] = _warnings(caplog)
    assert "proxy_gold_gap fired at step 9: value 0.4444" in msg


def test_state_survives_a_checkpoint_without_a_second_warning(log, caplog):
    cfg = MonitorConfig(baseline_steps=1)
    a = TrainingMonitors(cfg)
    a.measure(PROMPTS, NORMAL, k=2, stats={"response_length": 10.0, "entropy": 2.0})
    a.measure(PROMPTS, NORMAL, k=2, stats={"response_length": 30.0, "entropy": 2.0})
    a.warn(2, log)
    saved = a.state_dict()
    buf = __import__("io").BytesIO()
    torch.save(saved, buf)  # checkpoints load extra state with weights_only=True
    buf.seek(0)
    b = TrainingMonitors(cfg)
    b.load_state_dict(torch.load(buf, weights_only=True))
    outs = [m.measure(PROMPTS, NORMAL, k=2, stats={"response_length": 25.0, "entropy": 2.0}) for m in (a, b)]
    assert outs[0] == outs[1] and outs[1]["monitor/length_drift"] == pytest.approx(2.5)
    b.warn(3, log)
    assert len(_warnings(caplog)) == 1  # the resumed monitors know length_drift already warned


def test_monitors_off_still_log_gold():
    mon = TrainingMonitors(MonitorConfig(enabled=False), gold_fn=lambda p, r: [len(x) for x in r])
    out = mon.measure(["p", "q"], ["ab", "abcd"], k=1, stats=dict(START))
    assert out == {"gold": 3.0}


def test_gold_and_monitor_knobs_are_checked():
    with pytest.raises(ConfigError, match="'gold'"):
        load_config(PPOConfig, None, ["gold=no_such_rule"]).check()
    with pytest.raises(ConfigError, match="monitors.baseline_steps"):
        load_config(PPOConfig, None, ["monitors.baseline_steps=0"]).check()
    cfg = load_config(PPOConfig, None, ["gold=char_fraction(chars=abc)", "monitors.repetition=0.5"])
    cfg.check()
    assert cfg.monitors.repetition == 0.5 and cfg.gold == "char_fraction(chars=abc)"


def test_a_tiny_ppo_run_logs_gold_and_monitor_rows(tmp_path):
    """The reward source and the gold are the same rule here, so `gold` must equal `score` on every row."""
    from alignlab.profiles import load_profile
    from alignlab.trainers.ppo import train_ppo
    from alignlab.trainers.run import read_metrics

    over = [
        f"train.output_dir={tmp_path}",
        "train.max_steps=3",
        "train.progress=false",
        "train.num_samples=0",
        "data.eval_fraction=0",
        "gold=char_fraction(chars=abcdefghijklmnopqrstuvwxyz)",
        "monitors.baseline_steps=1",
        "monitors.entropy_collapse=2.0",  # any entropy ratio < 2 fires: the warning must reach log.txt
    ]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train_ppo(load_config(PPOConfig, None, over, base=load_profile("tiny")["ppo"]))
    finally:
        torch.set_num_threads(n)
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    assert len(rows) == 3
    for r in rows:
        assert r["gold"] == pytest.approx(r["score"], abs=1e-6)
        assert 0.0 <= r["monitor/diversity"] <= 1.0
    assert "monitor/entropy_collapse" not in rows[0]  # step 1 is the start
    assert all("monitor/entropy_collapse" in r and "monitor/length_drift" in r for r in rows[1:])
    log_text = (tmp_path / "tiny" / "ppo" / "log.txt").read_text()
    assert log_text.count("monitor entropy_collapse fired at step 2") == 1 and "WARNING" in log_text


def test_the_report_draws_the_monitors_of_a_stage():
    pytest.importorskip("matplotlib")
    from alignlab.report.build import render_html
    from alignlab.report.figures import all_figures, monitor_figure

    series = {"steps": [1, 2, 3], "values": [0.1, 0.5, None], "last": None}
    stage = {
        "name": "ppo",
        "metrics": {"train": {"score": series, "monitor/repetition": series, "monitor/diversity": series}},
    }
    fig = monitor_figure(stage)
    assert [ax.get_title() for ax in fig.axes] == ["diversity", "repetition"]
    assert monitor_figure({"name": "sft", "metrics": {"train": {"loss": series}}}) is None
    figs = all_figures({"stages": [stage]})
    assert "monitors-ppo" in figs
    summary = {"run": "r", "stages": [{**stage, "state": "complete", "complete": {}, "cost": {}}]}
    html = render_html(summary, {"monitors-ppo": b"png"})
    assert 'alt="ppo monitors"' in html


def test_a_changed_monitor_threshold_does_not_block_a_resume_but_a_changed_beta_does():
    from alignlab.config import PPOConfig, from_dict, to_dict
    from alignlab.config.parse import config_diff
    from alignlab.trainers.run import RESUMABLE_CHANGES

    base = to_dict(from_dict(PPOConfig, {}))
    thresholds = to_dict(from_dict(PPOConfig, {"monitors": {"repetition": 0.9, "proxy_gold_gap": 0.1}}))
    assert config_diff(base, thresholds) == ["monitors.proxy_gold_gap", "monitors.repetition"]
    assert config_diff(base, thresholds, ignore=RESUMABLE_CHANGES) == []
    assert config_diff(base, to_dict(from_dict(PPOConfig, {"beta": 0.5})), ignore=RESUMABLE_CHANGES) == ["beta"]
