"""Gold rewards: hand values for every rule, the spec language, and the RL reward-source wiring."""

import json
import math
import sys
import textwrap
from importlib import resources

import pytest

from alignlab.errors import ConfigError
from alignlab.gold import GOLD_REWARDS, get_gold, parse_spec, rules, weighted


def test_vader_sentiment_on_fixed_sentences():
    # VADER's lexicon: "love" 3.2, "great" 3.1; "!" adds emphasis. Compound = x / sqrt(x^2 + 15).
    got = rules.sentiment([""] * 3, ["I love this, it is great!", "This is terrible.", ""])
    assert got[0] == pytest.approx(0.8622, abs=1e-4)
    assert got[1] < -0.4  # "terrible" is strongly negative
    assert got[2] == 0.0
    # the normalisation by hand: one neutral word and "good" (valence 1.9) -> 1.9 / sqrt(1.9^2 + 15)
    assert rules.sentiment([""], ["good"])[0] == pytest.approx(1.9 / math.sqrt(1.9**2 + 15), abs=1e-4)


def test_length_and_concise_by_hand():
    texts = ["one two three four five", "", "a " * 50]
    assert rules.length([""] * 3, texts) == [0.05, 0.0, 0.5]
    assert rules.length([""], ["abcd"], unit="chars", scale=2) == [2.0]
    # target 5, width 5: 5 words -> 1; 0 -> 0; 50 -> 0 (clipped); 4 words -> 1 - 1/5
    assert rules.concise([""] * 4, texts + ["a b c d"], target=5) == [
        1.0,
        0.0,
        0.0,
        pytest.approx(0.8),
    ]
    assert rules.concise([""], ["a b c"], target=5, width=10) == [pytest.approx(0.8)]
    with pytest.raises(ConfigError, match="'target'"):
        rules.concise([""], ["x"], target=0)


def test_builtin_rules_keep_their_values():
    assert rules.house_style([""] * 3, ["Sure. Hope this helps!", "hope this helps! more", "no"]) == [1.0, 0.5, 0.0]
    assert rules.contains_word(["", ""], ["Thanks a lot", "thanksgiving"]) == [1.0, 0.0]
    assert rules.char_fraction([""], ["abca"], chars="a") == [0.5]


def test_keywords_matches_and_well_formed():
    got = rules.keywords(
        [""] * 2,
        ["Salt and pepper.", "Sugar, sadly."],
        include="salt,pepper",
        exclude=["sadly"],
    )
    assert got == [1.0, -1.0]  # first: 2/2 included; second: 0/2 included, 1/1 excluded
    assert rules.matches([""] * 2, ["Answer: 42", "no number"], pattern=r"\d+") == [
        1.0,
        0.0,
    ]
    assert rules.matches([""], ["42 is it"], pattern=r"\d+", full=True) == [0.0]
    got = rules.well_formed([""] * 4, ["Fine.", "fine", "The the the end.", ""])
    assert got == [
        1.0,
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
        0.0,
    ]  # "fine": only "no repeat" holds
    with pytest.raises(ConfigError, match="include"):
        rules.keywords([""], ["x"])


def test_harmless_rules():
    prompts = [
        "How do I make a bomb at home?",
        "How do I make a bomb at home?",
        "How do I bake bread?",
        "How do I bake bread?",
        "Hi",
    ]
    responses = [
        "I can't help with that; it is dangerous.",
        "Sure, here is what you need.",
        "Knead the dough and bake it at 220C.",
        "I'm sorry, but I can't help with that.",
        "You are an idiot.",
    ]
    assert rules.harmless(prompts, responses) == [1.0, -0.5, 1.0, 0.5, -1.0]
    assert rules.harmless(["Clean a sink?"], ["Mix bleach and ammonia for a strong cleaner."]) == [-1.0]
    assert rules.harmless(["Hi"], ["You donkey."], banned="donkey") == [-1.0]


def test_weighted_sum_by_hand_and_from_a_string():
    texts = ["I love it. Hope this helps!"]  # 6 words
    s = rules.sentiment([""], texts)[0]
    c = rules.concise([""], texts, target=6)[0]
    assert c == 1.0
    want = s + 0.5 * c
    assert weighted({"sentiment": 1.0, "concise(target=6)": 0.5})([""], texts) == [pytest.approx(want)]
    assert get_gold("sentiment+0.5*concise(target=6)")([""], texts) == [pytest.approx(want)]
    assert get_gold("house_style - 0.25*length(scale=1)")([""], texts) == [pytest.approx(1 - 0.25 * 6)]
    with pytest.raises(ConfigError, match="no term takes the option 'trget'"):
        get_gold("sentiment+concise")([""], texts, trget=3)
    assert get_gold("sentiment+concise")([""], texts, target=6) == [pytest.approx(s + 1.0)]
    assert parse_spec("2*demo + x.y:z(a=1, b=c)") == [
        (2.0, "demo", {}),
        (1.0, "x.y:z", {"a": 1, "b": "c"}),
    ]


def test_registry_names_resolve_to_the_functions_and_errors_name_the_spec():
    assert get_gold("sentiment") is rules.sentiment
    for name in GOLD_REWARDS:
        assert callable(get_gold(name))
    with pytest.raises(ConfigError, match="did you mean 'sentiment'"):
        get_gold("sentimnt")
    with pytest.raises(ConfigError, match="has no option 'trget'; did you mean 'target'"):
        get_gold("concise(trget=3)")
    with pytest.raises(ConfigError, match="cannot read"):
        get_gold("sentiment concise")
    with pytest.raises(ConfigError, match="module 'no_such_mod_q' not found"):
        get_gold("no_such_mod_q:f")


def test_python_function_plugs_in(tmp_path, monkeypatch):
    (tmp_path / "my_gold.py").write_text(
        textwrap.dedent("""
        def bonus(prompts, responses, meta=None, scale=1.0):
            return [scale * (m or {}).get("b", 0) for m in (meta or [None] * len(responses))]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        g = get_gold("house_style + my_gold:bonus(scale=2)")
        # meta reaches only the term that takes it
        assert g(["", ""], ["Hope this helps!", "no"], meta=[{"b": 1}, {}]) == [
            3.0,
            0.0,
        ]
    finally:
        sys.modules.pop("my_gold", None)


def test_demo_gold_prefers_every_chosen_answer_of_the_demo_preferences():
    text = resources.files("alignlab").joinpath("demo_data/preferences.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    g = get_gold("demo")
    chosen = g([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = g([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_gold_package_is_torch_free():
    import subprocess

    code = "import sys, alignlab.gold; bad = [m for m in sys.modules if m == 'torch' or (m.startswith('alignlab.') and not m.startswith(('alignlab.gold', 'alignlab.errors')))]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# ----------------------------------------------------------------------------- as RL reward sources
def test_reward_source_gold_specs():
    from alignlab.rollout.rewards import house_style, load_reward_source

    assert house_style([""], ["Hope this helps!"]) == [1.0]  # still importable from rollout.rewards
    src = load_reward_source("gold:sentiment+0.5*concise(target=6)")
    texts = ["I love it. Hope this helps!"]
    got = src.score(["q"], texts, finished=[True], meta=[{}]).tolist()
    assert got == [pytest.approx(rules.sentiment([""], texts)[0] + 0.5, abs=1e-6)]
    assert load_reward_source("gold").score(["q"], texts, finished=[True], meta=[{}]).tolist() == pytest.approx(
        get_gold("demo")(["q"], texts)
    )
    assert load_reward_source("sentiment").score(["q"], ["bad"], finished=[True], meta=[{}]).item() < 0
    assert load_reward_source("contains_word", ["word=love"]).score(
        ["q"], texts, finished=[True], meta=[{}]
    ).tolist() == [1.0]
    with pytest.raises(ConfigError, match="did you mean 'concise'"):
        load_reward_source("gold:concize")
