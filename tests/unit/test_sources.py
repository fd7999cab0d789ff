"""Every file format reads the same records; file-level errors; demo data; counts; splits."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from alignlab.data import (
    DEMOS,
    Message,
    PreferenceRecord,
    SFTRecord,
    load_records,
    read_rows,
    split_records,
)
from alignlab.errors import ConfigError, DataError

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, there?"}]
ROWS = [
    {"prompt": CONV, "chosen": "Hello, friend.\nSecond line.", "rejected": "Go away."},
    {"prompt": [{"role": "user", "content": "Ünïcode ✓"}], "chosen": "yes", "rejected": "no"},
    {"prompt": [{"role": "user", "content": "same?"}], "chosen": "x ", "rejected": " x"},
    {"prompt": [{"role": "user", "content": "Last"}], "chosen": "a, b", "rejected": '"quoted"'},
]
EXPECTED = [
    PreferenceRecord(
        (Message("system", "Be brief."), Message("user", "Hi, there?")), "Hello, friend.\nSecond line.", "Go away."
    ),
    PreferenceRecord((Message("user", "Ünïcode ✓"),), "yes", "no"),
    PreferenceRecord((Message("user", "Last"),), "a, b", '"quoted"'),
]


def write_all_formats(tmp_path, rows):
    """The same rows as .jsonl, .jsonl.gz, .json, .csv, .parquet and datasets folders."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    paths = {}
    paths["jsonl"] = tmp_path / "d.jsonl"
    paths["jsonl"].write_text(lines, encoding="utf-8")
    paths["jsonl.gz"] = tmp_path / "d.jsonl.gz"
    with gzip.open(paths["jsonl.gz"], "wt", encoding="utf-8") as f:
        f.write(lines)
    paths["json"] = tmp_path / "d.json"
    paths["json"].write_text(json.dumps({"data": rows}), encoding="utf-8")
    paths["csv"] = tmp_path / "d.csv"
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    paths["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    paths["dataset"] = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["dataset"]))
    dd = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:1]), "test": datasets.Dataset.from_list(rows)}
    ).save_to_disk(str(dd))
    paths["datasetdict"] = f"{dd}::test"
    return paths


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    return write_all_formats(tmp_path_factory.mktemp("formats"), ROWS)


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "csv", "parquet", "dataset", "datasetdict"])
def test_every_format_gives_the_same_records(formats, fmt):
    result = load_records(formats[fmt], "preference")
    assert result.records == EXPECTED
    assert result.counts == {"rows": 4, "records": 3, "dropped_identical": 1, "dropped_empty_answer": 0, "expanded": 0}
    assert result.source == str(formats[fmt])


def test_where_per_format(formats):
    def wheres(fmt):
        return [w for w, _ in read_rows(formats[fmt])]

    assert wheres("jsonl") == [f"{formats['jsonl']}:{i}" for i in (1, 2, 3, 4)]
    assert wheres("json") == [f"{formats['json']}:row {i}" for i in (1, 2, 3, 4)]
    # csv: header on line 1, row 1 spans lines 2-3 (a quoted newline), so rows start at 2, 4, 5, 6
    assert wheres("csv") == [f"{formats['csv']}:{i}" for i in (2, 4, 5, 6)]
    assert wheres("parquet") == [f"{formats['parquet']}:row {i}" for i in (1, 2, 3, 4)]
    assert wheres("dataset")[0] == f"{formats['dataset']}:row 1"
    assert wheres("datasetdict")[3] == f"{formats['datasetdict']}:row 4"


def test_datasetdict_default_split_and_unknown_split(formats):
    folder = formats["datasetdict"].rsplit("::", 1)[0]
    assert len(load_records(folder, "preference").records) == 1  # "train" by default
    with pytest.raises(DataError, match="no split 'dev'.*'train', 'test'"):
        load_records(f"{folder}::dev", "preference")
    with pytest.raises(DataError, match="single Dataset"):
        list(read_rows(f"{formats['dataset']}::train"))


def test_json_accepts_list_and_rows_key(tmp_path):
    rows = [{"prompt": "Q", "response": "A"}]
    for i, data in enumerate([rows, {"rows": rows}]):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(data))
        assert load_records(path, "sft").records == [SFTRecord((Message("user", "Q"),), "A")]


def test_csv_label_and_ranking_cells(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('prompt,responses,ranking\nQ,"[""a"", ""b""]","[2, 1]"\n')
    rec = load_records(path, "ranking").records[0]
    assert rec.responses == ("a", "b") and rec.ranks == (2, 1)
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label\nQ,[not json],true\nQ,B,FALSE\n")
    recs = load_records(path, "unpaired").records
    assert [(r.response, r.desirable) for r in recs] == [("[not json]", True), ("B", False)]


@pytest.mark.parametrize(
    "name, content, where_suffix, fragment",
    [
        ("bad.json", b'[{"prompt": "Q"},\n {"prompt": }]', ":2", "not valid JSON"),
        ("lines.json", b'{"prompt": "Q"}\n{"prompt": "R"}\n', ":2", "name the file .jsonl"),
        ("obj.json", b'{"items": []}', "", "'data' or 'rows'"),
        ("row.json", b'[{"prompt": "Q"}, 3]', ":row 2", "expected an object"),
        ("bad.csv", b"prompt,response\nQ,A\nQ,A,extra\n", ":3", "3 cells but the header has 2"),
        ("utf.csv", b"prompt,response\nQ,A\nQ,caf\xc3\x28\n", ":3", "byte offset 5"),
        ("dup.csv", b"prompt,prompt\nQ,A\n", ":1", "column 'prompt' twice"),
        ("arr.jsonl", b'[\n{"prompt": "Q"}\n]\n', ":1", "name the file .json"),
        ("empty.jsonl", b"\n  \n", "", "has no rows"),
        ("bad.parquet", b"not parquet", "", "cannot read parquet"),
        ("bad.jsonl.gz", b"not gzip", "", "cannot read the file"),
    ],
)
def test_file_level_errors(tmp_path, name, content, where_suffix, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_records(path, "prompt")
    assert info.value.where == f"{path}{where_suffix}"
    assert fragment in str(info.value)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file or folder.*demo:sft") as info:
        load_records(tmp_path / "nope.jsonl", "sft")
    assert info.value.where == str(tmp_path / "nope.jsonl")
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(DataError, match=r"unknown file type; supported: \.jsonl.*\.parquet"):
        load_records(path, "sft")
    with pytest.raises(DataError, match="not one saved by datasets"):
        load_records(tmp_path, "sft")
    with pytest.raises(DataError, match="did you mean 'demo:prompts'"):
        load_records("demo:prompt", "prompt")


def test_all_dropped_is_an_error_but_limit_zero_is_not(tmp_path):
    path = tmp_path / "same.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "a"}) + "\n")
    with pytest.raises(DataError, match="all 1 rows were dropped"):
        load_records(path, "preference")
    assert load_records(path, "preference", limit=0).records == []
    with pytest.raises(ConfigError, match="limit"):
        load_records(path, "preference", limit=-1)


def test_limit_and_expanded_counts(tmp_path):
    path = tmp_path / "si.jsonl"
    row = {"instruction": "Add.", "instances": [{"input": str(i), "output": str(i)} for i in range(3)]}
    path.write_text((json.dumps(row) + "\n") * 3)
    full = load_records(path, "sft")
    assert full.counts == {"rows": 3, "records": 9, "dropped_identical": 0, "dropped_empty_answer": 0, "expanded": 6}
    part = load_records(path, "sft", limit=4)
    assert len(part.records) == 4 and part.counts["rows"] == 2 and part.counts["expanded"] == 2
    assert "9 records (6 expanded)" in full.summary()


# --------------------------------------------------------------------------- demo data


def test_demo_sets_load_and_follow_the_house_style():
    sft = load_records("demo:sft", "sft")
    assert 150 <= len(sft.records) <= 200
    for r in sft.records:
        assert r.response.endswith(" Hope this helps!") and len(r.response.split()) < 60
    prefs = load_records("demo:preferences", "preference")
    assert 150 <= len(prefs.records) and prefs.counts["dropped_identical"] == 0
    for r in prefs.records:
        assert r.chosen.endswith(" Hope this helps!") and "Hope this helps!" not in r.rejected
    prompts = load_records("demo:prompts", "prompt")
    assert 190 <= len(prompts.records)
    texts = {r.prompt for r in prompts.records}
    assert len(texts) == len(prompts.records)  # distinct
    assert not texts & {r.prompt for r in sft.records}  # and distinct from the SFT prompts
    assert set(DEMOS) == {"sft", "prompts", "preferences"}


# --------------------------------------------------------------------------- splitting


def _sft(n, repeat=1):
    return [SFTRecord((Message("user", f"q{i // repeat}"),), f"a{i}") for i in range(n)]


def test_split_is_deterministic_disjoint_and_sized():
    records = _sft(100)
    train, held = split_records(records, 0.1, seed=3)
    assert split_records(records, 0.1, seed=3) == (train, held)
    assert split_records(records, 0.1, seed=4) != (train, held)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held, key=records.index) == records
    assert train == [r for r in records if r in train]  # input order kept


def test_split_keeps_prompt_groups_together():
    records = _sft(40, repeat=4)  # 10 prompts x 4 responses
    train, held = split_records(records, 0.25, seed=0)
    assert len(held) == 8  # first fit: two whole groups of 4; a third would pass 10
    assert not {r.prompt for r in train} & {r.prompt for r in held}


def test_split_edge_cases():
    assert split_records(_sft(5), 0.0, seed=0) == (_sft(5), [])
    train, held = split_records(_sft(2), 0.01, seed=0)
    assert len(train) == 1 and len(held) == 1
    with pytest.raises(ConfigError):
        split_records(_sft(5), 1.0, seed=0)
