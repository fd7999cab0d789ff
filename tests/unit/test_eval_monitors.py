"""Each monitor fires on its planted failure and stays quiet on varied, normal responses."""

from __future__ import annotations

import numpy as np
import pytest

from alignlab.eval import monitors

NORMAL = [
    "Paris is the capital of France and sits on the river Seine.",
    "To boil an egg, cover it with cold water, bring it to a boil and wait nine minutes.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A haiku has three lines of five, seven and five syllables.",
    "You can reset the router by holding its small button for ten seconds.",
    "Mercury is the planet closest to the Sun and has almost no atmosphere.",
    "Sorting a list with merge sort takes n log n comparisons in the worst case.",
    "Drink water regularly, sleep well and walk a little every day.",
]
SHAPE = ("name", "value", "threshold", "fired", "message")


def _check_shape(res):
    assert tuple(res) == SHAPE and isinstance(res["fired"], bool) and res["message"]


def test_quiet_on_normal_responses():
    out = monitors.sample_monitors(NORMAL, baseline=NORMAL[::-1])
    assert set(out) == {"length_drift", "repetition", "diversity"}
    for res in out.values():
        _check_shape(res)
        assert not res["fired"], res
    assert out["repetition"]["value"] == 0.0


def test_repetition_fires_on_a_policy_that_repeats_one_word():
    looping = ["great " * 40, "great great great great great great great great", "yes " * 25]
    res = monitors.repetition(looping)
    _check_shape(res)
    assert res["fired"] and res["value"] > 0.8
    assert monitors.distinct_n("great great great great", 1) == pytest.approx(0.25)
    assert monitors.distinct_n("a b a b", 2) == pytest.approx(2 / 3)


def test_diversity_fires_when_every_answer_is_the_same_text():
    same = ["I am a helpful assistant and I am happy to help you today."] * 6
    res = monitors.diversity([same, same[:3]])
    assert res["fired"] and res["value"] == 1.0
    # one response per prompt: the monitor compares across prompts
    assert monitors.sample_monitors(same)["diversity"]["fired"]
    # varied answers per prompt stay quiet
    assert not monitors.diversity({"p1": NORMAL[:4], "p2": NORMAL[4:]})["fired"]


def test_length_drift_fires_on_blow_up_and_on_shrinking():
    long = [" ".join(NORMAL[i:] + NORMAL[:i]) * 2 for i in range(len(NORMAL))]
    res = monitors.length_drift(long, NORMAL)
    assert res["fired"] and res["value"] > 10
    short = ["ok"] * len(NORMAL)
    assert monitors.length_drift(short, NORMAL)["fired"]
    assert monitors.length_drift([], NORMAL) is None
    # token lengths instead of words
    assert monitors.length_drift([], [], lengths=[10, 12], baseline_lengths=[11, 11])["value"] == pytest.approx(1.0)


def test_entropy_collapse():
    falling = [{"step": i, "entropy": 2.0 * 0.9**i} for i in range(50)]
    res = monitors.entropy_collapse(falling)
    assert res["fired"] and res["value"] < 0.1
    steady = [{"step": i, "entropy": 2.0 + 0.05 * np.sin(i)} for i in range(50)]
    assert not monitors.entropy_collapse(steady)["fired"]
    assert monitors.entropy_collapse([{"loss": 1.0}]) is None


def test_proxy_gold_gap_fires_only_when_proxy_rises_while_gold_falls():
    steps = np.arange(60)
    proxy = 0.05 * steps
    gold = -((steps - 20) ** 2) / 400.0  # peaks at step 20, then falls
    res = monitors.proxy_gold_gap(proxy, gold)
    assert res["fired"] and res["value"] > 0.5
    # both rising: quiet
    assert not monitors.proxy_gold_gap(proxy, 0.03 * steps)["fired"]
    # both falling after the peak (the run just got worse): not a proxy–gold gap
    assert not monitors.proxy_gold_gap(-np.abs(steps - 20.0), gold)["fired"]
    rows = [{"step": int(s), "score": float(p), "gold": float(g)} for s, p, g in zip(steps, proxy, gold)]
    assert monitors.training_monitors(rows)["proxy_gold_gap"]["fired"]


def test_disagreement():
    rising = [{"rm/disagreement": 0.1 + 0.02 * i} for i in range(50)]
    assert monitors.disagreement(rising)["fired"]
    flat = [{"rm/disagreement": 0.1} for _ in range(50)]
    assert not monitors.disagreement(flat)["fired"]
    assert "disagreement" not in monitors.training_monitors([{"entropy": 1.0}, {"entropy": 1.0}])


def test_pairwise_similarity_samples_pairs_for_many_responses():
    many = [f"answer number {i} about topic {i % 7}" for i in range(400)]  # 79 800 pairs
    sampled = monitors.pairwise_similarity(many, max_pairs=2000)
    exact = monitors.pairwise_similarity(many, max_pairs=10**6)
    assert sampled == pytest.approx(exact, abs=0.02)
    assert monitors.pairwise_similarity(["same text"] * 400, max_pairs=100) == 1.0
