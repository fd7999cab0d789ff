"""Read data files into raw rows, and rows into validated records.

A *spec* names where data comes from:

* a file, by suffix: ``.jsonl`` (one object per line), ``.json`` (a list of objects, or an object
  holding one under ``"data"`` or ``"rows"``), ``.csv`` (a header row, then one row per record; a
  cell holding a JSON list — messages, responses, ranking — is decoded), ``.parquet``; the text
  formats may also be gzipped (``.jsonl.gz``, ``.json.gz``, ``.csv.gz``);
* a folder written by ``datasets``' ``save_to_disk``: a ``Dataset``, or a ``DatasetDict`` whose
  split is chosen with ``folder::split`` (default ``train``);
* ``demo:<name>``: the small data sets shipped with alignlab (``demo:sft``, ``demo:prompts``,
  ``demo:preferences``).

Every row carries ``where``: ``"file:N"`` for line-based formats (.jsonl and .csv, N = the line
the row starts on, so an editor can jump to it) and ``"file:row N"`` for .json, .parquet and
datasets folders (N counts rows from 1). What a row must contain is in :mod:`alignlab.data.rows`.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from alignlab.data.rows import check_kind, records_from_row, type_name
from alignlab.errors import ConfigError, DataError, did_you_mean

DEMOS = {"sft": "sft.jsonl", "prompts": "prompts.jsonl", "preferences": "preferences.jsonl"}
FORMATS = (
    ".jsonl, .jsonl.gz, .json, .json.gz, .csv, .csv.gz, .parquet, a folder saved with "
    "datasets' save_to_disk (folder::split for a DatasetDict), or demo:<name> "
    f"({', '.join('demo:' + d for d in DEMOS)})"
)


# ---------------------------------------------------------------------------------------------
# Text helpers


def _invalid_utf8(e: UnicodeDecodeError, data: bytes, display: str, line: int | None = None) -> DataError:
    bad = data[e.start : e.end].hex(" ")
    if line is None:  # whole-file decode: find the line of the bad byte
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1)
    else:
        col = e.start
    return DataError(
        f"{display}:{line}",
        f"invalid UTF-8 (byte {bad}) at byte offset {col} of the line; save the file as UTF-8",
    )


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(where, f"not valid JSON: {e.msg} at column {e.colno}") from None
    except (ValueError, RecursionError) as e:  # e.g. an int too long, nesting too deep
        raise DataError(where, f"not valid JSON: {str(e)[:200]}") from None


def _read_bytes(path: Path, display: str) -> bytes:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(display, f"cannot read the file: {e}") from None


def _read_text(path: Path, display: str) -> str:
    data = _read_bytes(path, display)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _invalid_utf8(e, data, display) from None


def _binary_lines(path: Path, display: str) -> Iterator[bytes]:
    """The file's lines as bytes, streamed (gzip read errors become DataError)."""
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            yield from f
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(display, f"cannot read the file: {e}") from None


# ---------------------------------------------------------------------------------------------
# One reader per format: (path, display) -> (where, row) pairs


def _read_jsonl(path: Path, display: str) -> Iterator[tuple[str, dict]]:
    for lineno, raw in enumerate(_binary_lines(path, display), 1):
        where = f"{display}:{lineno}"
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _invalid_utf8(e, raw, display, lineno) from None
        if not text.strip():
            continue
        try:
            row = _parse_json(text, where)
        except DataError as e:
            if lineno == 1 and text.strip() == "[":
                raise DataError(where, f"{e.reason} (a JSON array? name the file .json)") from None
            raise
        if not isinstance(row, dict):
            raise DataError(where, f"expected a JSON object on each line, got {type_name(row)}")
        yield where, row


def _read_json(path: Path, display: str) -> Iterator[tuple[str, dict]]:
    text = _read_text(path, display)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (one object per line? name the file .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"{display}:{e.lineno}", f"not valid JSON: {e.msg} at column {e.colno}{hint}") from None
    except (ValueError, RecursionError) as e:
        raise DataError(display, f"not valid JSON: {str(e)[:200]}") from None
    if isinstance(data, dict):
        key = next((k for k in ("data", "rows") if isinstance(data.get(k), list)), None)
        if key is None:
            raise DataError(
                display,
                "expected a list of rows, or an object with a 'data' or 'rows' list; "
                f"found an object with keys {sorted(data)[:8]}",
            )
        data = data[key]
    if not isinstance(data, list):
        raise DataError(display, f"expected a list of rows, got {type_name(data)}")
    for i, row in enumerate(data, 1):
        where = f"{display}:row {i}"
        if not isinstance(row, dict):
            raise DataError(where, f"expected an object for each row, got {type_name(row)}")
        yield where, row


def _csv_cell(cell: str) -> Any:
    """A cell's value: a JSON list (messages, responses, ranking) is decoded, all else is text."""
    if cell.lstrip().startswith("["):
        try:
            value = json.loads(cell)
        except (ValueError, RecursionError):
            return cell
        if isinstance(value, list):
            return value
    return cell


def _read_csv(path: Path, display: str) -> Iterator[tuple[str, dict]]:
    text = _read_text(path, display)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long responses are fine
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    line = 0  # the line the next record starts on is line + 1
    try:
        for cells in reader:
            start, line = line + 1, reader.line_num
            where = f"{display}:{start}"
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                dup = next((h for h in header if header.count(h) > 1), None)
                if dup is not None:
                    raise DataError(where, f"the header names column {dup!r} twice", dup)
                continue
            if len(cells) != len(header):
                raise DataError(
                    where,
                    f"has {len(cells)} cells but the header has {len(header)} columns; "
                    "quote cells that contain commas or newlines",
                )
            yield where, {h: _csv_cell(c) for h, c in zip(header, cells)}
    except csv.Error as e:
        raise DataError(f"{display}:{reader.line_num}", f"not valid CSV: {e}") from None


def _read_parquet(path: Path, display: str) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(display, "reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield f"{display}:row {n}", row
    except DataError:
        raise
    except Exception as e:  # pyarrow's own error types (ArrowInvalid, ...) for a bad file
        raise DataError(display, f"cannot read parquet: {str(e)[:300]}") from None


def _read_datasets(folder: Path, split: str | None, display: str) -> Iterator[tuple[str, dict]]:
    is_dict = (folder / "dataset_dict.json").is_file()
    is_dataset = (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file()
    if not (is_dict or is_dataset):
        raise DataError(
            display,
            "is a folder, but not one saved by datasets' save_to_disk (it has no "
            f"dataset_info.json, state.json or dataset_dict.json); give a data file: {FORMATS}",
        )
    if is_dataset and split is not None:
        raise DataError(display, f"is a single Dataset, not a DatasetDict; drop '::{split}'")
    try:
        import datasets
    except ImportError:
        raise DataError(display, "reading a datasets folder needs: pip install datasets") from None
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as e:  # the library's own errors for a damaged folder
        raise DataError(display, f"cannot load the datasets folder: {str(e)[:300]}") from None
    if is_dict:
        split = split or "train"
        if split not in loaded:
            raise DataError(
                display,
                f"has no split {split!r}; it has {', '.join(map(repr, loaded))}: choose one with '{display}::<split>'",
            )
        loaded, display = loaded[split], f"{display}::{split}"
    for i, row in enumerate(loaded, 1):
        yield f"{display}:row {i}", row


_READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _format(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _READERS:
        if name.endswith(suffix) or (suffix != ".parquet" and name.endswith(suffix + ".gz")):
            return suffix
    return None


def read_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, row)`` for each row of a data file, datasets folder or ``demo:`` set.

    Raises DataError for a missing file, an unknown format, or a row that is not an object.
    """
    spec = os.fspath(path)
    if spec.startswith("demo:"):
        name = spec[len("demo:") :]
        if name not in DEMOS:
            choices = ["demo:" + d for d in DEMOS]
            raise DataError(
                spec, f"no such demo data set{did_you_mean(spec, choices)} (choose one of: {', '.join(choices)})"
            )
        resource = resources.files("alignlab").joinpath("demo_data", DEMOS[name])
        with resources.as_file(resource) as real:
            yield from _read_jsonl(Path(real), spec)
        return
    display, split = spec, None
    if "::" in spec and not os.path.exists(spec):
        display, split = spec.rsplit("::", 1)
    p = Path(display)
    if p.is_dir():
        yield from _read_datasets(p, split, display)
        return
    if not p.exists():
        raise DataError(
            display,
            f"no such file or folder (relative paths start from {os.getcwd()}); check the path, "
            "or try a packaged demo set: " + ", ".join("demo:" + d for d in DEMOS),
        )
    if split is not None:
        raise DataError(spec, "'::split' only applies to a folder saved with save_to_disk")
    suffix = _format(p)
    if suffix is None:
        raise DataError(display, f"unknown file type; supported: {FORMATS}")
    yield from _READERS[suffix](p, display)


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class LoadResult:
    """What :func:`load_records` read.

    ``counts`` always has ``rows`` (rows read), ``records`` (records returned),
    ``dropped_identical`` (answers equal after stripping), ``dropped_empty_answer`` (HH-RLHF rows
    with an empty final answer) and ``expanded`` (records beyond one per row: self-instruct
    instances, preference rows read as unpaired), so that
    ``records == rows - dropped_identical - dropped_empty_answer + expanded``.
    """

    records: list
    counts: dict[str, int]
    source: str

    def summary(self) -> str:
        """One line for a log: ``demo:sft: 160 rows -> 160 records``, plus any drops."""
        c = self.counts
        extra = [f"{v} {k.replace('_', ' ')}" for k, v in c.items() if k not in ("rows", "records") and v]
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"{self.source}: {c['rows']} rows -> {c['records']} records{tail}"


def load_records(spec: str | os.PathLike, kind: str, *, limit: int | None = None) -> LoadResult:
    """Read ``spec`` (see :func:`read_rows`) into validated records of ``kind``.

    ``kind`` is one of sft, preference, ranking, unpaired, prompt (ConfigError otherwise).
    ``limit`` caps the number of records returned (reading stops there). Raises DataError at the
    first bad row, naming where it is and the field; and when the source has no usable record
    (unless ``limit=0``).
    """
    check_kind(kind)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ConfigError(f"limit must be None or an int >= 0, got {limit!r}")
    source = os.fspath(spec)
    counts = {"rows": 0, "records": 0, "dropped_identical": 0, "dropped_empty_answer": 0, "expanded": 0}
    records: list = []
    for where, row in read_rows(spec):
        if limit is not None and len(records) >= limit:
            break
        counts["rows"] += 1
        new, dropped = records_from_row(row, kind, where)
        if dropped is not None:
            counts[dropped] = counts.get(dropped, 0) + 1
            continue
        if limit is not None:
            new = new[: limit - len(records)]
        counts["expanded"] += len(new) - 1
        records.extend(new)
    counts["records"] = len(records)
    if not records and limit != 0:
        if counts["rows"] == 0:
            raise DataError(source, "has no rows; check that it is the file you meant")
        raise DataError(source, f"no usable {kind} records: all {counts['rows']} rows were dropped ({counts})")
    return LoadResult(records, counts, source)


def split_records(records: Sequence, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Split records into ``(train, eval)``, deterministically for a given ``seed``.

    Records that share a prompt go to the same side (a prompt seen in training says little about
    held-out quality), so the eval share is ``eval_fraction`` of the records, rounded, as closely
    as whole prompt groups allow. With ``eval_fraction > 0`` and at least two prompts, eval gets at
    least one group and train keeps at least one. Each side keeps the input order.
    """
    if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(getattr(r, "prompt", i), []).append(i)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    n = len(records)
    target = round(n * eval_fraction)
    if eval_fraction > 0 and len(keys) >= 2:
        target = max(target, 1)
    eval_idx: set[int] = set()
    for key in keys:  # first fit: whole groups, never past the target
        if len(eval_idx) + len(groups[key]) <= target:
            eval_idx.update(groups[key])
    if not eval_idx and target > 0 and len(keys) >= 2:
        eval_idx.update(groups[keys[0]])
    train = [r for i, r in enumerate(records) if i not in eval_idx]
    held = [r for i, r in enumerate(records) if i in eval_idx]
    return train, held
