"""The simulated annotator: its label rates match the Bradley–Terry / Plackett–Luce model it claims."""

import math

import numpy as np
import pytest

from alignlab.feedback.annotator import AnnotatorPanel, SimulatedAnnotator

N = 20000
GOLD = "length(scale=1)"  # gold = the word count, so Δg is set by how many words a response has


def words(n: int) -> str:
    return " ".join(["w"] * n) if n else ""


def within(rate: float, p: float, n: int, k: float = 4.0) -> bool:
    """``rate`` is within k standard errors of the binomial mean p."""
    return abs(rate - p) <= k * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("delta, tau, bias", [(1, 1.0, 0.0), (2, 1.5, 0.0), (0, 1.0, 0.7), (1, 0.5, -0.5)])
def test_first_shown_wins_at_the_bradley_terry_rate(delta, tau, bias):
    ann = SimulatedAnnotator(GOLD, temperature=tau, position_bias=bias, seed=1)
    first, second = [words(1 + delta)] * N, [words(1)] * N
    rows, stats = ann.label_pairs(["q"] * N, first, second)
    rate = stats.first_chosen / N
    p = 1 / (1 + math.exp(-(delta / tau + bias)))
    assert within(rate, p, N), (rate, p)
    assert stats.ties == 0 and len(rows) == N
    # the recorded confidence is the model's probability of the choice made
    assert all(r["confidence"] == pytest.approx(p, abs=1e-6) for r in rows if r["chosen_position"] == "A")
    assert all(r["confidence"] == pytest.approx(1 - p, abs=1e-6) for r in rows if r["chosen_position"] == "B")


def test_ties_inside_the_margin_and_flips_at_their_rate():
    # half the pairs have Δ=0.5 (inside the margin 0.75: ties), half Δ=3 with τ tiny: the gold's choice, then flipped at 0.2
    ann = SimulatedAnnotator("length(scale=2)", temperature=1e-3, tie_margin=0.75, flip_rate=0.2, seed=2)
    first = [words(2), words(7)] * (N // 2)
    second = [words(1)] * N
    rows, stats = ann.label_pairs(["q"] * N, first, second)
    assert stats.ties == N // 2 and len(rows) == N // 2
    flipped = sum(r["chosen"] == words(1) for r in rows) / len(rows)
    assert within(flipped, 0.2, len(rows)) and stats.flips == sum(r["chosen"] == words(1) for r in rows)


def test_plackett_luce_first_places_match_softmax():
    g = np.array([0.0, 1.0, 2.0, 3.0])
    tau = 1.5
    ann = SimulatedAnnotator(GOLD, temperature=tau, seed=3)
    group = [words(int(x) + 1) for x in g]  # word counts 1..4: gold differences equal g's
    n = 8000
    rows = ann.label_rankings(["q"] * n, [group] * n)
    first = np.zeros(4)
    for r in rows:
        first[r["ranking"].index(1)] += 1
        assert sorted(r["ranking"]) == [1, 2, 3, 4]
    soft = np.exp(g / tau) / np.exp(g / tau).sum()
    for i in range(4):
        assert within(first[i] / n, soft[i], n), (first / n, soft)
    # the whole order: P(3 ≻ 2 ≻ 1 ≻ 0) = Π softmax over those left
    e = np.exp(g / tau)
    p_order = e[3] / e.sum() * e[2] / e[:3].sum() * e[1] / e[:2].sum()
    got = sum(r["ranking"] == [4, 3, 2, 1] for r in rows) / n
    assert within(got, p_order, n)


def test_plackett_luce_position_bias_favours_the_first_shown():
    # equal gold scores, bias b on the first: P(first shown is ranked 1st) = e^b / (e^b + K - 1)
    ann = SimulatedAnnotator(GOLD, position_bias=1.0, seed=5)
    n = 6000
    rows = ann.label_rankings(["q"] * n, [["x y", "y z", "z x"]] * n)
    rate = sum(r["ranking"][0] == 1 for r in rows) / n
    assert within(rate, math.e / (math.e + 2), n)


def test_same_seed_same_labels_other_seed_other_labels():
    args = (["q"] * 200, [words(3)] * 200, [words(2)] * 200)
    a = SimulatedAnnotator(GOLD, seed=7).label_pairs(*args)[0]
    b = SimulatedAnnotator(GOLD, seed=7).label_pairs(*args)[0]
    c = SimulatedAnnotator(GOLD, seed=8).label_pairs(*args)[0]
    assert a == b and a != c


def test_panel_members_disagree_at_the_flip_rate():
    panel = AnnotatorPanel(2, gold=GOLD, temperature=1e-3, flip_rate=0.1, seed=4)
    n = 10000
    rows, stats = panel.label_pairs(["q"] * n, [words(3)] * n, [words(1)] * n)
    by = {m.name: [r["chosen"] for r in rows if r["annotator"] == m.name] for m in panel.members}
    a, b = by.values()
    disagree = sum(x != y for x, y in zip(a, b)) / n
    assert within(disagree, 2 * 0.1 * 0.9, n)
    assert stats.per_annotator == {"sim-0": n, "sim-1": n}
    one = AnnotatorPanel(3, gold=GOLD, seed=4, assign="one").label_pairs(
        ["q"] * 300, [words(3)] * 300, [words(1)] * 300
    )[0]
    assert len(one) == 300 and len({r["annotator"] for r in one}) == 3


def test_rows_load_as_preference_and_ranking_records(tmp_path):
    from alignlab.data import load_records
    from alignlab.runs import atomic_write_jsonl

    ann = SimulatedAnnotator("demo", seed=0)
    prompts = ["How do I boil an egg?", "How do I store bread?"]
    good = [
        "Boil it for seven minutes, then cool it. Hope this helps!",
        "Keep it in a paper bag. Hope this helps!",
    ]
    bad = ["No.", "Figure it out yourself, it is not hard."]
    rows, _ = ann.label_pairs(prompts, good, bad)
    atomic_write_jsonl(tmp_path / "p.jsonl", rows)
    recs = load_records(tmp_path / "p.jsonl", "preference").records
    assert len(recs) == 2 and {r.chosen for r in recs} <= set(good + bad)
    ranked = ann.label_rankings(prompts, [[g, b, b + " Maybe."] for g, b in zip(good, bad)])
    atomic_write_jsonl(tmp_path / "r.jsonl", ranked)
    assert len(load_records(tmp_path / "r.jsonl", "ranking").records) == 2


def test_gold_agreement_of_preference_rows():
    from alignlab.feedback.sources import gold_agreement

    rows = [
        {"prompt": "q", "chosen": "a b c", "rejected": "a"},  # gold (length) agrees
        {"prompt": "q", "chosen": "a", "rejected": "a b"},  # disagrees
        {"prompt": "q", "chosen": "x", "rejected": "y"},  # equal gold: left out
    ]
    assert gold_agreement(rows, GOLD) == 0.5
