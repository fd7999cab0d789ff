"""``data check``: it finds planted problems and stays silent on clean data."""

import json
import math
import random

import pytest

from alignlab.feedback.checks import binomial_p, check_preferences, render, similarity, word_edits

VOCAB = [
    "bread",
    "rice",
    "soup",
    "salad",
    "tea",
    "eggs",
    "beans",
    "pasta",
    "fish",
    "cake",
    "jam",
    "pie",
    "bake",
    "boil",
    "stir",
    "chill",
    "slice",
    "toast",
    "whisk",
    "steam",
    "roast",
    "fry",
    "grill",
    "mash",
    "gently",
    "slowly",
    "golden",
    "warm",
    "cold",
    "fresh",
    "salt",
    "pepper",
    "lemon",
    "garlic",
    "onion",
    "butter",
    "oil",
    "honey",
    "oven",
    "pan",
    "pot",
    "lid",
    "bowl",
    "spoon",
    "knife",
    "board",
    "minutes",
    "hours",
    "crisp",
    "soft",
    "sweet",
    "sour",
    "bitter",
    "herbs",
    "cream",
    "flour",
    "sugar",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.sample(VOCAB, n)).capitalize() + "."


def clean_rows(n: int = 60, seed: int = 0) -> list[dict]:
    """Distinct random prompts and answers; the chosen one is the longer in exactly half the rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        short, long = sentence(rng, rng.randint(4, 7)), sentence(rng, rng.randint(12, 18))
        chosen, rejected = (long, short) if i % 2 else (short, long)
        rows.append({"prompt": sentence(rng, 8)[:-1] + "?", "chosen": chosen, "rejected": rejected})
    return rows


def write(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return path


def test_similarity_measures_by_hand():
    assert word_edits("2+2 equals 4.", "2+2 is 4.") == 1
    # difflib: "2+2 " and "s 4." match, 8 characters of 13 + 9 -> 2 * 8 / 22
    assert similarity("2+2 equals 4.", "2+2 is 4.") == pytest.approx(16 / 22)
    assert word_edits("a b c", "a x y c d") == 3  # replace b by x y (2), insert d (1)
    # binomial: 9 of 10 -> 2 * (C(10,0) + C(10,1) + C(10,9)... one tail = (1 + 10) / 1024
    assert binomial_p(9, 10) == pytest.approx(2 * 11 / 1024)
    assert binomial_p(5, 10) == 1.0


def test_clean_data_is_silent(tmp_path):
    report = check_preferences(write(tmp_path / "clean.jsonl", clean_rows()))
    assert report["ok"] and report["findings"] == [] and report["records"] == 60
    assert report["checks"]["length_bias"]["rate"] == pytest.approx(0.5)
    assert "no problems found" in render(report)


def test_demo_preferences_are_clean():
    assert check_preferences("demo:preferences")["ok"]


def test_near_identical_pair_is_flagged(tmp_path):
    rows = clean_rows()
    rows[7] = {"prompt": "What is 2+2?", "chosen": "2+2 equals 4.", "rejected": "2+2 is 4."}
    report = check_preferences(write(tmp_path / "p.jsonl", rows))
    ni = report["checks"]["near_identical"]
    assert ni["count"] == 1 and ni["where"] == [f"{tmp_path / 'p.jsonl'}:8"]
    assert not report["ok"] and "nearly the same" in report["findings"][0] and "p.jsonl:8" in report["findings"][0]


def test_planted_duplicates_are_found(tmp_path):
    rows = clean_rows()
    rows.append(dict(rows[3]))  # exact copy of line 4
    near = dict(rows[10])
    near["chosen"] = near["chosen"].replace(".", "!")  # punctuation edit of line 11
    rows.append(near)
    path = write(tmp_path / "d.jsonl", rows)
    du = check_preferences(path)["checks"]["duplicates"]
    assert du["exact"] == 1 and du["near"] == 1
    assert [f"{path}:4", f"{path}:61"] in du["where"] and [f"{path}:11", f"{path}:62"] in du["where"]


def test_planted_length_bias_is_found(tmp_path):
    rows = clean_rows()
    for i, r in enumerate(rows):  # 54 of 60 pairs now prefer the longer answer
        if i % 10 and len(r["chosen"]) < len(r["rejected"]):
            r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    report = check_preferences(write(tmp_path / "l.jsonl", rows))
    lb = report["checks"]["length_bias"]
    assert lb["chosen_longer"] == 54 and lb["pairs"] == 60 and lb["flag"]
    assert lb["p_value"] == pytest.approx(binomial_p(54, 60)) and lb["p_value"] < 1e-9
    assert any(f.startswith("length bias") for f in report["findings"])


def test_position_bias_agreement_and_leaks(tmp_path):
    rows = clean_rows()
    for i, r in enumerate(rows):
        r["chosen_position"] = "A" if i % 8 else "B"  # 52 of 60 shown first
    report = check_preferences(write(tmp_path / "p.jsonl", rows))
    assert report["checks"]["balance"]["position"]["first_chosen"] == 52 and report["checks"]["balance"]["flag"]
    # two annotators on the same 20 pairs: they agree on 15
    labelled = []
    for i, r in enumerate(clean_rows(20)):
        labelled.append({**r, "annotator": "x"})
        flip = i % 4 == 0
        labelled.append({**r, "annotator": "y", **({"chosen": r["rejected"], "rejected": r["chosen"]} if flip else {})})
    ag = check_preferences(write(tmp_path / "a.jsonl", labelled))["checks"]["agreement"]
    assert ag["method"] == "cohen" and ag["items"] == 20 and ag["observed"] == pytest.approx(0.75)
    # a leak: one train prompt is in the eval file
    ev = write(tmp_path / "eval.jsonl", [{"prompt": rows[5]["prompt"]}, {"prompt": "something else entirely"}])
    lk = check_preferences(write(tmp_path / "t.jsonl", clean_rows()), eval_path=ev)["checks"]["leaks"]
    assert lk["count"] == 1 and lk["where"] == [[f"{tmp_path / 't.jsonl'}:6", f"{ev}:1"]]


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    rows = clean_rows(10)
    rows[2] = {"prompt": "q", "chosen": "x"}
    report = check_preferences(write(tmp_path / "bad.jsonl", rows))
    assert report["errors"][0]["where"] == f"{tmp_path / 'bad.jsonl'}:3"
    assert "missing field 'rejected'" in report["errors"][0]["message"] and not report["ok"]
    assert math.isclose(report["records"], 9)


def test_near_duplicates_of_long_rows_are_found_among_many(tmp_path):
    rng = random.Random(1)
    words = [f"{w}{i}" for w in VOCAB for i in range(40)]  # a vocabulary large enough that rows differ

    def text(n):
        return " ".join(rng.choices(words, k=n)) + "."

    rows = [{"prompt": text(12), "chosen": text(80), "rejected": text(30)} for _ in range(300)]
    copy = dict(rows[123])
    changed = copy["chosen"].split()
    changed[5] = "changed"
    copy["chosen"] = " ".join(changed)  # one word of 80 replaced
    rows.append(copy)
    path = write(tmp_path / "big.jsonl", rows)
    du = check_preferences(path)["checks"]["duplicates"]
    assert du["exact"] == 0 and du["where"] == [[f"{path}:124", f"{path}:301"]]


def test_rows_sharing_one_small_vocabulary_are_checked_quickly(tmp_path):
    import time

    rng = random.Random(2)
    rows = [
        {"prompt": sentence(rng, 12), "chosen": sentence(rng, 40), "rejected": sentence(rng, 30)} for _ in range(120)
    ]
    start = time.perf_counter()
    report = check_preferences(write(tmp_path / "v.jsonl", rows))
    assert report["checks"]["duplicates"]["near"] == 0
    assert time.perf_counter() - start < 30  # every pair is a MinHash candidate; the word-order filter keeps it cheap
