"""Data: files → validated, typed records (see :mod:`alignlab.data.rows` for row shapes).

>>> from alignlab.data import load_records
>>> result = load_records("demo:sft", "sft")
>>> result.records[0].response.endswith("Hope this helps!")
True
"""

from __future__ import annotations

from alignlab.data.hh import parse_hh_transcript, split_hh_pair, split_hh_transcript
from alignlab.data.records import (
    Message,
    PreferenceRecord,
    Prompt,
    PromptRecord,
    RankingRecord,
    Record,
    SFTRecord,
    UnpairedRecord,
    to_chat,
)
from alignlab.data.rows import KINDS, records_from_row
from alignlab.data.sources import DEMOS, LoadResult, load_records, read_rows, split_records

__all__ = [
    "DEMOS",
    "KINDS",
    "LoadResult",
    "Message",
    "PreferenceRecord",
    "Prompt",
    "PromptRecord",
    "RankingRecord",
    "Record",
    "SFTRecord",
    "UnpairedRecord",
    "load_records",
    "parse_hh_transcript",
    "read_rows",
    "records_from_row",
    "split_hh_pair",
    "split_hh_transcript",
    "split_records",
    "to_chat",
]
