"""HH-RLHF transcripts: parsing, pair splitting, and the real harmless-base test file."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from alignlab.data import Message, load_records, parse_hh_transcript, split_hh_pair
from alignlab.errors import DataError

CHOSEN = (
    "\n\nHuman: How do I boil an egg?"
    "\n\nAssistant: Put it in boiling water for nine minutes."
    "\n\nHuman: And for a soft yolk?"
    "\n\nAssistant: About six minutes, then cool it in cold water."
)
REJECTED = (
    "\n\nHuman: How do I boil an egg?"
    "\n\nAssistant: Put it in boiling water for nine minutes."
    "\n\nHuman: And for a soft yolk?"
    "\n\nAssistant: Why would you want that?"
)


def _hh_file() -> Path | None:
    repo = Path(__file__).resolve().parents[2]
    name = "hh-rlhf-harmless-base-test.jsonl.gz"
    for folder in (os.environ.get("ALIGNLAB_SHARED_DATA"), repo.parent / "shared" / "data", "/work/shared/data"):
        if folder and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def test_two_turn_split_gives_exact_prompt_and_answers():
    prompt, chosen, rejected = split_hh_pair(CHOSEN, REJECTED)
    assert prompt == (
        Message("user", "How do I boil an egg?"),
        Message("assistant", "Put it in boiling water for nine minutes."),
        Message("user", "And for a soft yolk?"),
    )
    assert chosen == "About six minutes, then cool it in cold water."
    assert rejected == "Why would you want that?"


def test_parse_maps_speakers_strips_and_keeps_inline_markers():
    text = "Human:  hi there \n\nAssistant: I said Human: hello\n\nHuman: ok"
    assert parse_hh_transcript(text) == [
        Message("user", "hi there"),
        Message("assistant", "I said Human: hello"),
        Message("user", "ok"),
    ]


def test_consecutive_turns_of_one_speaker_are_merged():
    text = "\n\nHuman: q\n\nAssistant: part one\n\nAssistant: part two"
    assert parse_hh_transcript(text) == [Message("user", "q"), Message("assistant", "part one\n\npart two")]


@pytest.mark.parametrize(
    "chosen, rejected, field, fragment",
    [
        ("no markers at all", REJECTED, "chosen", "does not start with 'Human:'"),
        (CHOSEN, "\n\nAssistant: hi", "rejected", "does not start with 'Human:'"),
        (CHOSEN + "\n\nHuman: more?", REJECTED, "chosen", "ends with a Human turn"),
        (CHOSEN, REJECTED.replace("nine", "ten"), "rejected", "differ at turn 2"),
        (CHOSEN, "\n\nHuman: How do I boil an egg?\n\nAssistant: x", "rejected", "differ at turn"),
        ("\n\nHuman: \n\nAssistant: a", "\n\nHuman: \n\nAssistant: b", "chosen", "is empty"),
    ],
)
def test_bad_pairs_raise_data_error(chosen, rejected, field, fragment):
    with pytest.raises(DataError) as info:
        split_hh_pair(chosen, rejected, where="f.jsonl:7")
    assert info.value.where == "f.jsonl:7"
    assert info.value.field == field
    assert fragment in str(info.value)


def test_hh_rows_through_load_records(tmp_path):
    path = tmp_path / "hh.jsonl"
    rows = [
        {"chosen": CHOSEN, "rejected": REJECTED},
        {"chosen": CHOSEN, "rejected": CHOSEN + "  "},  # identical answers: dropped
        {"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: yo"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = load_records(path, "preference")
    assert [r.chosen for r in result.records] == ["About six minutes, then cool it in cold water."]
    assert result.counts["dropped_identical"] == 1
    assert result.counts["dropped_empty_answer"] == 1
    assert result.records[0].where == f"{path}:1"
    # as SFT the chosen transcript alone is used; as prompts the shared turns
    assert load_records(path, "sft").records[0].response.startswith("About six minutes")
    prompts = load_records(path, "prompt").records
    assert prompts[0].prompt[-1] == Message("user", "And for a soft yolk?")


@pytest.mark.skipif(_hh_file() is None, reason="shared/data HH-RLHF file not present")
def test_real_hh_file_parses_fully():
    path = _hh_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for i, row in enumerate(rows, 1):  # every row parses on its own
        prompt, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"], where=f"row {i}")
        roles = [m.role for m in prompt]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))  # alternating after merging
    result = load_records(path, "preference")
    assert result.counts == {
        "rows": 2312,
        "records": 2308,
        "dropped_identical": 0,
        "dropped_empty_answer": 4,
        "expanded": 0,
    }
    assert all(r.chosen.strip() and r.rejected.strip() for r in result.records)
