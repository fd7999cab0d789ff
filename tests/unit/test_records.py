"""Row shapes → records, and every kind of bad input → DataError naming file:line and field."""

from __future__ import annotations

import json

import pytest

from alignlab.data import (
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    SFTRecord,
    UnpairedRecord,
    load_records,
    records_from_row,
    to_chat,
)
from alignlab.errors import ConfigError, DataError

U = Message("user", "Q?")


def one(row, kind):
    records, dropped = records_from_row(row, kind, "x:1")
    assert dropped is None and len(records) == 1
    return records[0]


# --------------------------------------------------------------------------- accepted shapes


def test_sft_prompt_response_and_completion_alias_and_system():
    assert one({"prompt": "Q?", "response": "A."}, "sft") == SFTRecord((U,), "A.")
    assert one({"prompt": "Q?", "completion": "A."}, "sft") == SFTRecord((U,), "A.")
    rec = one({"prompt": "Q?", "response": "A.", "system": "Be kind."}, "sft")
    assert rec.prompt == (Message("system", "Be kind."), U)
    assert one({"prompt": "Q?", "response": "A.", "system": ""}, "sft").prompt == (U,)


def test_sft_messages_last_assistant_is_response():
    msgs = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "A2"},
    ]
    rec = one({"messages": msgs}, "sft")
    assert rec.response == "A2"
    assert to_chat(rec.prompt, rec.response) == msgs


def test_sft_alpaca_and_self_instruct():
    rec = one({"instruction": "Translate.", "input": "hola", "output": "hello"}, "sft")
    assert rec == SFTRecord((Message("user", "Translate.\n\nhola"),), "hello")
    rec = one({"instruction": "Say hi.", "input": "", "output": "hi"}, "sft")
    assert rec.prompt == (Message("user", "Say hi."),)
    row = {"instruction": "Add.", "instances": [{"input": "1+1", "output": "2"}, {"input": "", "output": "0"}]}
    records, dropped = records_from_row(row, "sft", "x:1")
    assert dropped is None
    assert records == [SFTRecord((Message("user", "Add.\n\n1+1"),), "2"), SFTRecord((Message("user", "Add."),), "0")]


def test_preference_row_as_sft_uses_chosen_and_ignores_rejected():
    assert one({"prompt": "Q?", "chosen": "good", "rejected": 5}, "sft") == SFTRecord((U,), "good")


def test_preference_strings_and_conversation_lists():
    assert one({"prompt": "Q?", "chosen": "a", "rejected": "b"}, "preference") == PreferenceRecord((U,), "a", "b")
    conv = lambda ans: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": ans}]
    # UltraFeedback style: prompt string and full conversations
    assert one({"prompt": "Q?", "chosen": conv("a"), "rejected": conv("b")}, "preference") == PreferenceRecord(
        (U,), "a", "b"
    )
    # no prompt: the shared conversation is the prompt
    assert one({"chosen": conv("a"), "rejected": conv("b")}, "preference") == PreferenceRecord((U,), "a", "b")


def test_identical_answers_are_dropped_not_errors():
    records, dropped = records_from_row({"prompt": "Q", "chosen": " a ", "rejected": "a"}, "preference", "x:1")
    assert records == [] and dropped == "dropped_identical"


def test_ranking_pairs_cover_all_pairs_best_first():
    rec = one({"prompt": "Q?", "responses": ["mid", "best", "worst"], "ranking": [2, 1, 3]}, "ranking")
    assert rec == RankingRecord((U,), ("mid", "best", "worst"), (2, 1, 3))
    assert list(rec.pairs()) == [("best", "mid"), ("best", "worst"), ("mid", "worst")]
    k4 = RankingRecord((U,), ("a", "b", "c", "d"), (4, 3, 2, 1))
    assert len(list(k4.pairs())) == 6


def test_unpaired_labels_and_preference_expansion():
    assert one({"prompt": "Q?", "completion": "a", "label": True}, "unpaired") == UnpairedRecord((U,), "a", True)
    assert one({"prompt": "Q?", "response": "a", "label": "false"}, "unpaired").desirable is False
    assert one({"prompt": "Q?", "response": "a", "label": 1}, "unpaired").desirable is True
    records, _ = records_from_row({"prompt": "Q?", "chosen": "a", "rejected": "b"}, "unpaired", "")
    assert records == [UnpairedRecord((U,), "a", True), UnpairedRecord((U,), "b", False)]


def test_prompt_kind_takes_prompt_of_any_row_and_keeps_extras_in_meta():
    rec = one({"prompt": "What is 2+2?", "answer": "4"}, "prompt")
    assert rec == PromptRecord((Message("user", "What is 2+2?"),), "", {"answer": "4"})
    assert one({"prompt": "Q?", "response": "A"}, "prompt").meta == {"response": "A"}
    rec = one({"messages": [{"role": "user", "content": "Q?"}]}, "prompt")
    assert rec.prompt == (U,) and rec.meta == {}
    records, _ = records_from_row(
        {"id": "t1", "instruction": "Add.", "instances": [{"input": "1+1", "output": "2"}]}, "prompt", ""
    )
    assert records[0].prompt == (Message("user", "Add.\n\n1+1"),)
    assert records[0].meta == {"id": "t1", "output": "2"}


def test_records_are_hashable_and_where_is_not_content():
    a = SFTRecord((U,), "A", "a.jsonl:1")
    b = SFTRecord((U,), "A", "b.csv:2")
    assert a == b and hash(a) == hash(b)
    assert hash(PromptRecord((U,), "w", {"x": [1]})) == hash(PromptRecord((U,), "v", {}))


def test_unknown_kind_is_config_error_with_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'preference'"):
        records_from_row({}, "preferences", "")
    with pytest.raises(ConfigError, match="did you mean 'sft'"):
        load_records("demo:sft", "stf")


# --------------------------------------------------------------------------- bad inputs in files

GOOD = {
    "sft": {"prompt": "Q?", "response": "A."},
    "preference": {"prompt": "Q?", "chosen": "a", "rejected": "b"},
    "ranking": {"prompt": "Q?", "responses": ["a", "b"], "ranking": [1, 2]},
    "unpaired": {"prompt": "Q?", "response": "a", "label": True},
    "prompt": {"prompt": "Q?"},
}
MSG_BAD_ROLE = [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]

# (kind, bad line (str, dict or bytes), field, fragments expected in the message)
BAD = [
    ("sft", '{"prompt": "Q", "response": }', None, ["not valid JSON", "Expecting value at column 29"]),
    ("sft", "[1, 2]", None, ["expected a JSON object", "got list"]),
    ("sft", '"just text"', None, ["got string"]),
    ("sft", {"prompt": "Q"}, "response", ["missing field 'response'", "{messages}", "{instruction, input?, output}"]),
    ("sft", {"question": "Q"}, "prompt", ["missing field 'prompt'", "'question'"]),
    ("sft", {"prompt": "Q", "response": 3}, "response", ["expected a string or a messages list, got int"]),
    ("sft", {"prompt": 7, "response": "A"}, "prompt", ["got int"]),
    ("sft", {"prompt": "Q", "response": "  \n "}, "response", ["empty or whitespace"]),
    ("sft", {"prompt": " ", "response": "A"}, "prompt", ["empty or whitespace"]),
    ("sft", {"prompt": "Q", "response": "A", "system": 1}, "system", ["expected a string, got int"]),
    ("sft", {"prompt": "Q", "response": "A", "completion": "B"}, "completion", ["keep one"]),
    ("sft", {"messages": MSG_BAD_ROLE}, "messages[1].role", ["bad role 'bot'", "'assistant'"]),
    ("sft", {"messages": [{"role": "user", "content": "Q"}]}, "messages[0].role", ["must be the assistant's answer"]),
    ("sft", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant"}]}, "messages[1]", ["no 'content'"]),
    ("sft", {"messages": "hi"}, "messages", ["expected a list, got string"]),
    ("sft", {"instruction": "Do", "instances": [{"input": "x", "output": ""}]}, "instances[0].output", ["empty"]),
    ("sft", {"instruction": "Do", "input": "x"}, "output", ["missing field 'output'"]),
    ("sft", b'{"prompt": "caf\xe9", "response": "A"}', None, ["invalid UTF-8", "byte offset 15"]),
    ("sft", '{"prompt": "\\ud800", "response": "A"}', "prompt", ["unpaired surrogate"]),
    ("preference", {"prompt": "Q", "chosen": "a"}, "rejected", ["missing field 'rejected'"]),
    ("preference", {"prompt": "Q", "chosen": "", "rejected": "b"}, "chosen", ["empty"]),
    ("preference", {"prompt": "Q", "chosen": "a", "rejected": "\t"}, "rejected", ["empty"]),
    ("preference", {"prompt": "Q", "chosen": ["a"], "rejected": "b"}, "chosen[0]", ["expected a message object"]),
    (
        "preference",
        {"chosen": "a", "rejected": "b"},
        "chosen",
        ["does not start with 'Human:'", "needs a 'prompt' field"],
    ),
    (
        "preference",
        {
            "prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            "chosen": "a",
            "rejected": "b",
        },
        "prompt",
        ["must end with a user message"],
    ),
    ("ranking", {"prompt": "Q", "responses": ["a", "b"], "ranking": [1, 1]}, "ranking", ["not a permutation of 1..2"]),
    (
        "ranking",
        {"prompt": "Q", "responses": ["a", "b", "c"], "ranking": [0, 1, 2]},
        "ranking",
        ["not a permutation of 1..3"],
    ),
    ("ranking", {"prompt": "Q", "responses": ["a", "b"], "ranking": [1]}, "ranking", ["1 ranks for 2 responses"]),
    ("ranking", {"prompt": "Q", "responses": ["a"], "ranking": [1]}, "responses", ["at least 2"]),
    (
        "ranking",
        {"prompt": "Q", "responses": ["a", "b"], "ranking": [1, True]},
        "ranking[1]",
        ["expected an int rank, got bool"],
    ),
    ("ranking", {"prompt": "Q", "responses": ["a", "b"]}, "ranking", ["missing field 'ranking'"]),
    ("unpaired", {"prompt": "Q", "response": "a", "label": "yes"}, "label", ["expected true or false, got 'yes'"]),
    ("unpaired", {"prompt": "Q", "response": "a"}, "label", ["missing field 'label'"]),
    ("prompt", {"text": "Q"}, "prompt", ["missing field 'prompt'", "{instruction, input?}"]),
    ("prompt", {"prompt": ""}, "prompt", ["empty"]),
    ("prompt", {"prompt": [{"role": "narrator", "content": "Q"}]}, "prompt[0].role", ["bad role"]),
]


def _write(path, kind, bad):
    good = json.dumps(GOOD[kind]).encode()
    if isinstance(bad, dict):
        bad = json.dumps(bad)
    if isinstance(bad, str):
        bad = bad.encode()
    path.write_bytes(good + b"\n\n" + bad + b"\n" + good + b"\n")  # bad row is on line 3


@pytest.mark.parametrize("kind, bad, field, fragments", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_row_names_file_line_and_field(tmp_path, kind, bad, field, fragments):
    path = tmp_path / "data.jsonl"
    _write(path, kind, bad)
    with pytest.raises(DataError) as info:
        load_records(path, kind)
    err = info.value
    assert err.where == f"{path}:3"
    assert err.field == field
    message = str(err)
    assert message.startswith(f"{path}:3: ")
    if field:
        assert f"field '{field}'" in message
    for fragment in fragments:
        assert fragment in message


def test_good_rows_of_the_bad_files_are_good(tmp_path):
    """The fixture's good row loads for every kind (so the failures above are the bad rows')."""
    for kind, row in GOOD.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(json.dumps(row) + "\n")
        assert len(load_records(path, kind).records) == 1
