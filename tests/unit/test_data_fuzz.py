"""Fuzz: whatever a data file holds, loading it raises DataError or nothing else."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignlab.data import KINDS, load_records
from alignlab.errors import DataError

# ALIGNLAB_FUZZ_EXAMPLES=3000 for a long local search; the default keeps the suite fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("ALIGNLAB_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


FIELDS = [
    "prompt",
    "response",
    "completion",
    "chosen",
    "rejected",
    "messages",
    "system",
    "instruction",
    "input",
    "output",
    "instances",
    "responses",
    "ranking",
    "label",
    "role",
    "content",
]
text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "\ud800",
            "Human: hi",
            "\n\nHuman: q\n\nAssistant: a",
            "\n\nHuman: q\n\nAssistant: b",
            "\n\nHuman: q",
            "true",
            "[1, 2]",
        ]
    ),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), text)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", 3]), "content": scalar})
json_value = st.recursive(
    scalar | message,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
row = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), json_value, max_size=6)


def _load_everything(path: Path) -> None:
    for kind in KINDS:
        try:
            result = load_records(path, kind)
        except DataError:
            continue
        assert result.counts["records"] == len(result.records) > 0


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes(fuzz_dir, data):
    for name in ("f.jsonl", "f.json", "f.csv"):
        _load_everything(_write(fuzz_dir, name, data))


@SETTINGS
@given(st.lists(json_value, min_size=1, max_size=4))
def test_arbitrary_json_values_as_lines(fuzz_dir, values):
    data = "\n".join(json.dumps(v) for v in values).encode()
    _load_everything(_write(fuzz_dir, "v.jsonl", data))


@SETTINGS
@given(st.lists(row, min_size=1, max_size=3))
def test_arbitrary_rows(fuzz_dir, rows):
    data = "\n".join(json.dumps(r) for r in rows).encode()
    _load_everything(_write(fuzz_dir, "r.jsonl", data))


NEARLY_GOOD = [
    {"prompt": "Q", "response": "A", "system": "S"},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    {"instruction": "Do", "input": "x", "output": "y"},
    {"instruction": "Do", "instances": [{"input": "x", "output": "y"}]},
    {"prompt": "Q", "chosen": "a", "rejected": "b"},
    {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
    {"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [3, 1, 2]},
    {"prompt": "Q", "completion": "A", "label": False},
]


@SETTINGS
@given(st.sampled_from(NEARLY_GOOD), st.sampled_from(FIELDS), json_value)
def test_valid_rows_with_one_field_replaced(fuzz_dir, base, key, value):
    """Mostly-valid rows reach the deep checks that random dicts rarely get to."""
    data = json.dumps({**base, key: value}).encode()
    _load_everything(_write(fuzz_dir, "n.jsonl", data))


def test_nearly_good_rows_are_good(fuzz_dir):
    """Each base row above is valid for some kind, so the fuzz starts from real shapes."""
    for i, base in enumerate(NEARLY_GOOD):
        path = _write(fuzz_dir, f"base{i}.jsonl", json.dumps(base).encode())
        assert any(_loads(path, kind) for kind in KINDS), base


def _loads(path: Path, kind: str) -> bool:
    try:
        return bool(load_records(path, kind).records)
    except DataError:
        return False
