"""The rules that turn one raw row (a dict) into typed records (:mod:`alignlab.data.records`).

A record is a frozen dataclass. Its ``prompt`` is a conversation: a tuple of :class:`Message`
(role ``system``/``user``/``assistant``) that ends with a user message. ``where`` says where the
row came from (``"file:line"`` or ``"file:row N"``); it is provenance, not content, so it takes no
part in ``==`` or ``hash``: the same data read from a .jsonl and a .parquet file compare equal.

Kinds and the row shapes each accepts (fields not listed are ignored; for ``prompt`` rows they
are kept in ``PromptRecord.meta``). A *prompt* value is a string (one user message) or a messages
list ``[{"role", "content"}, ...]`` ending with a user message; an optional ``system`` string is
prepended as a system message. ``null`` counts as an absent field.

``sft`` → :class:`SFTRecord`, shapes tried in this order:
  1. ``{messages}`` — the last message must be the assistant's: it is the response, the rest the
     prompt;
  2. ``{instruction, instances: [{input, output}, ...]}`` (self-instruct) — one record per
     instance; prompt = instruction, plus a blank line and the input when the input is not empty;
  3. ``{instruction, input?, output}`` (Alpaca) — prompt built the same way;
  4. ``{prompt, response}`` — ``completion`` is accepted as an alias of ``response``;
  5. a preference row (see below) — the chosen answer is the response and the rejected one is
     ignored (not even validated): "the better answer" is a fine demonstration.

``preference`` → :class:`PreferenceRecord`:
  * ``{prompt, chosen, rejected}``; chosen/rejected are strings, or messages lists ending with the
    assistant's answer whose earlier messages (if any) must equal the prompt;
  * ``{chosen, rejected}`` without a prompt: either messages lists that share everything but the
    final answer, or Anthropic HH-RLHF transcripts (see :mod:`alignlab.data.hh`).
  Rows whose answers are equal after stripping whitespace are dropped and counted
  (``dropped_identical``), not errors: they carry no preference. An optional numeric ``margin``
  says how strongly chosen is preferred (Llama 2's preference strength; the reward model's
  ``margin_from_data`` reads it). HH-RLHF rows whose final answer is
  empty are dropped and counted (``dropped_empty_answer``): the public data has a few and a user
  cannot fix it; an empty answer written in any other shape is an error.

``ranking`` → :class:`RankingRecord`: ``{prompt, responses: [str, ...], ranking: [int, ...]}``.
  ``ranking[i]`` is the rank of ``responses[i]``, 1 = best; it must be a permutation of 1..K with
  K ≥ 2 (no ties: a tie says nothing about which to prefer; drop tied answers instead). This
  orientation is the one a labelling form produces (a rank next to each answer); note it is *not*
  a list of indices in preference order. A row whose answers are all identical is dropped.

``unpaired`` → :class:`UnpairedRecord` (KTO): ``{prompt, response|completion, label}`` where
  label is ``true``/``false`` (also the strings ``"true"``/``"false"`` and the ints 1/0, which CSV
  and parquet files produce); the response may be a messages list like ``chosen``. A preference
  row is also accepted and gives two records (chosen desirable, rejected undesirable) — counted as
  ``expanded``.

``prompt`` → :class:`PromptRecord` (for RL): ``{prompt}``, or the prompt part of any row above
  (messages rows may end with a user message; HH rows give their shared turns; self-instruct rows
  one record per instance). Every field not used for the prompt goes into ``meta`` (for example a
  reference answer for a verifiable reward; for self-instruct the instance's ``output``).

Validation errors are :class:`~alignlab.errors.DataError` naming ``where`` and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from alignlab.data.hh import split_hh_pair, split_hh_transcript
from alignlab.data.records import (
    ROLE_HINTS,
    ROLES,
    Message,
    PreferenceRecord,
    Prompt,
    PromptRecord,
    RankingRecord,
    SFTRecord,
    UnpairedRecord,
)
from alignlab.errors import ConfigError, DataError, did_you_mean

# ---------------------------------------------------------------------------------------------
# Field checks


def type_name(value: Any) -> str:
    """A user-facing name for a JSON value's type."""
    if value is None:
        return "null"
    return {str: "string", dict: "object", list: "list", tuple: "list"}.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 40) -> str:
    """A short repr of a value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has(row: dict, key: str) -> bool:
    return row.get(key) is not None


def _string(value: Any, where: str, field: str, *, allow_empty: bool = False) -> str:
    """``value`` as text: a string that is valid Unicode and (unless allowed) not blank."""
    if not isinstance(value, str):
        raise DataError(where, f"expected a string, got {type_name(value)}", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            where,
            f"text is not valid Unicode: unpaired surrogate {value[e.start]!r} at character "
            f"{e.start}; fix the \\u escape in the file",
            field,
        ) from None
    if not allow_empty and not value.strip():
        raise DataError(where, "is empty or whitespace only; give it some text", field)
    return value


def _list(value: Any, where: str, field: str) -> list:
    if not isinstance(value, list):
        raise DataError(where, f"expected a list, got {type_name(value)}", field)
    return value


def _messages(value: Any, where: str, field: str) -> list[Message]:
    """A validated messages list. An empty system message is dropped (datasets often carry one)."""
    items = _list(value, where, field)
    if not items:
        raise DataError(where, "the messages list is empty", field)
    out: list[Message] = []
    for i, item in enumerate(items):
        f = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise DataError(where, f"expected a message object {{role, content}}, got {type_name(item)}", f)
        for key in ("role", "content"):
            if key not in item:
                raise DataError(where, f"message has no '{key}' (a message is {{role, content}})", f)
        role = item["role"]
        if role not in ROLES or not isinstance(role, str):
            shown = _show(role) if isinstance(role, str) else type_name(role)
            did = ""
            if isinstance(role, str):
                low = role.strip().lower()
                did = f"; did you mean '{ROLE_HINTS[low]}'?" if low in ROLE_HINTS else did_you_mean(low, ROLES)
            raise DataError(where, f"bad role {shown}: a role is one of {', '.join(ROLES)}{did}", f + ".role")
        content = _string(item["content"], where, f + ".content", allow_empty=True)
        if role == "system":
            if i != 0:
                raise DataError(where, "a system message may only come first", f + ".role")
            if not content.strip():
                continue
        elif not content.strip():
            raise DataError(where, "is empty or whitespace only; give it some text", f + ".content")
        out.append(Message(role, content))
    if not out:
        raise DataError(where, "the messages list has only an empty system message", field)
    return out


def _check_prompt(msgs: list[Message] | tuple[Message, ...], where: str, field: str) -> Prompt:
    if not msgs:
        raise DataError(where, "the prompt is empty", field)
    if not any(m.role == "user" for m in msgs):
        raise DataError(where, "the prompt has no user message", field)
    if msgs[-1].role != "user":
        raise DataError(
            where,
            f"the prompt must end with a user message, but it ends with a {msgs[-1].role} message",
            field,
        )
    return tuple(msgs)


def _add_system(row: dict, prompt: Prompt, where: str) -> Prompt:
    """Prepend the row's optional ``system`` field."""
    if not _has(row, "system"):
        return prompt
    system = _string(row["system"], where, "system", allow_empty=True)
    if not system.strip():
        return prompt
    if prompt and prompt[0].role == "system":
        raise DataError(where, "both a 'system' field and a system message in the prompt; keep one", "system")
    return (Message("system", system),) + prompt


def _prompt_value(value: Any, where: str, field: str) -> Prompt:
    """A prompt field: a string (one user turn) or a messages list ending with a user turn."""
    if isinstance(value, list):
        return _check_prompt(_messages(value, where, field), where, field)
    if not isinstance(value, str):
        raise DataError(where, f"expected a string or a messages list, got {type_name(value)}", field)
    return (Message("user", _string(value, where, field)),)


def _prompt(row: dict, where: str) -> Prompt:
    if "prompt" not in row:
        raise DataError(where, "missing field 'prompt'", "prompt")
    return _add_system(row, _prompt_value(row["prompt"], where, "prompt"), where)


def _answer(value: Any, where: str, field: str) -> tuple[Prompt | None, str]:
    """An answer field: a string, or a messages list whose last message is the answer.

    Returns ``(context, answer)``; ``context`` is the messages before the answer (None if none).
    """
    if isinstance(value, list):
        msgs = _messages(value, where, field)
        if msgs[-1].role != "assistant":
            raise DataError(
                where,
                f"the last message must be the assistant's answer, not {msgs[-1].role}",
                f"{field}[{len(value) - 1}].role",
            )
        context = _check_prompt(msgs[:-1], where, field) if len(msgs) > 1 else None
        return context, msgs[-1].content
    if not isinstance(value, str):
        raise DataError(where, f"expected a string or a messages list, got {type_name(value)}", field)
    return None, _string(value, where, field)


def _one_of(row: dict, keys: tuple[str, ...], where: str, accepted: str) -> str:
    """The single present key among aliases (e.g. response/completion)."""
    present = [k for k in keys if _has(row, k)]
    if len(present) > 1:
        raise DataError(where, f"has both {present[0]!r} and {present[1]!r}; keep one", present[1])
    if not present:
        if any(k in row for k in keys):
            k = next(k for k in keys if k in row)
            raise DataError(where, "expected a string, got null", k)
        raise DataError(where, f"missing field {keys[0]!r}; {accepted}", keys[0])
    return present[0]


def _require(row: dict, key: str, where: str, accepted: str) -> Any:
    if key not in row:
        raise DataError(where, f"missing field {key!r}; {accepted}", key)
    return row[key]


def _instruction_prompt(instruction: str, input_: Any, where: str, field: str) -> str:
    if input_ is None:
        return instruction
    text = _string(input_, where, field, allow_empty=True)
    return f"{instruction}\n\n{text}" if text.strip() else instruction


# ---------------------------------------------------------------------------------------------
# Shapes shared by several kinds


def _messages_row(row: dict, where: str) -> tuple[Prompt, str]:
    """``{messages}``: (prompt, response) where the response is the last, assistant, message."""
    msgs = _messages(row["messages"], where, "messages")
    if msgs[-1].role != "assistant":
        raise DataError(
            where,
            f"the last message must be the assistant's answer, not {msgs[-1].role}",
            f"messages[{len(row['messages']) - 1}].role",
        )
    if len(msgs) == 1:
        raise DataError(
            where,
            "messages has only the assistant's answer; it needs the user turn before it",
            "messages",
        )
    return _add_system(row, _check_prompt(msgs[:-1], where, "messages"), where), msgs[-1].content


def _self_instruct(row: dict, where: str) -> Iterator[tuple[Prompt, str | None, int]]:
    """``{instruction, instances}``: (prompt, output-or-None, instance index) per instance."""
    instruction = _require(row, "instruction", where, ACCEPTED["sft"])
    instruction = _string(instruction, where, "instruction")
    instances = _list(row["instances"], where, "instances")
    if not instances:
        raise DataError(where, "instances is empty; give at least one {input, output}", "instances")
    for i, inst in enumerate(instances):
        f = f"instances[{i}]"
        if not isinstance(inst, dict):
            raise DataError(where, f"expected an object {{input, output}}, got {type_name(inst)}", f)
        text = _instruction_prompt(instruction, inst.get("input"), where, f + ".input")
        prompt = _add_system(row, (Message("user", text),), where)
        output = inst.get("output")
        yield prompt, output, i


def _alpaca_prompt(row: dict, where: str) -> Prompt:
    instruction = _string(row["instruction"], where, "instruction")
    text = _instruction_prompt(instruction, row.get("input"), where, "input")
    return _add_system(row, (Message("user", text),), where)


def _reconcile(prompt: Prompt | None, context: Prompt | None, where: str, field: str) -> Prompt | None:
    """An answer given as a full conversation must repeat the row's prompt exactly."""
    if prompt is not None and context is not None and context != prompt:
        raise DataError(where, "this conversation's messages before the answer differ from 'prompt'", field)
    return prompt if prompt is not None else context


def _pair(row: dict, where: str, accepted: str) -> tuple[Prompt, str, str, bool]:
    """A preference row: (prompt, chosen, rejected, is_hh)."""
    chosen_v = _require(row, "chosen", where, accepted)
    rejected_v = _require(row, "rejected", where, accepted)
    if not _has(row, "prompt") and isinstance(chosen_v, str) and isinstance(rejected_v, str):
        _string(chosen_v, where, "chosen", allow_empty=True)
        _string(rejected_v, where, "rejected", allow_empty=True)
        prompt, chosen, rejected = split_hh_pair(chosen_v, rejected_v, where=where)
        return _add_system(row, prompt, where), chosen, rejected, True
    prompt = _prompt(row, where) if _has(row, "prompt") else None
    c_ctx, chosen = _answer(chosen_v, where, "chosen")
    r_ctx, rejected = _answer(rejected_v, where, "rejected")
    prompt = _reconcile(prompt, c_ctx, where, "chosen")
    prompt = _reconcile(prompt, r_ctx, where, "rejected")
    if prompt is None:
        raise DataError(
            where,
            f"missing field 'prompt' (chosen/rejected are not full conversations); {accepted}",
            "prompt",
        )
    return prompt, chosen, rejected, False


def _chosen_only(row: dict, where: str, accepted: str) -> tuple[Prompt, str, bool]:
    """The (prompt, chosen, is_hh) of a preference row, without looking at ``rejected``."""
    chosen_v = _require(row, "chosen", where, accepted)
    if not _has(row, "prompt") and isinstance(chosen_v, str):
        _string(chosen_v, where, "chosen", allow_empty=True)
        prompt, chosen = split_hh_transcript(chosen_v, where=where, field="chosen")
        return _add_system(row, prompt, where), chosen, True
    prompt = _prompt(row, where) if _has(row, "prompt") else None
    ctx, chosen = _answer(chosen_v, where, "chosen")
    prompt = _reconcile(prompt, ctx, where, "chosen")
    if prompt is None:
        raise DataError(where, f"missing field 'prompt'; {accepted}", "prompt")
    return prompt, chosen, False


# ---------------------------------------------------------------------------------------------
# One parser per kind: row → (records, dropped-counter-name or None)

Outcome = tuple[list, str | None]

ACCEPTED = {
    "sft": "an sft row is {prompt, response (or completion), system?}, {messages}, "
    "{instruction, input?, output}, {instruction, instances}, or a preference row "
    "{prompt?, chosen, rejected}",
    "preference": "a preference row is {prompt, chosen, rejected, system?}, or an HH-RLHF row "
    "{chosen, rejected} of full transcripts",
    "ranking": "a ranking row is {prompt, responses, ranking, system?} with ranking[i] the rank "
    "of responses[i], 1 = best",
    "unpaired": "an unpaired row is {prompt, response (or completion), label: true|false, "
    "system?}, or a preference row {prompt?, chosen, rejected}",
    "prompt": "a prompt row is {prompt, system?}, {messages}, {instruction, input?}, "
    "{instruction, instances}, or a preference row {prompt?, chosen, rejected}",
}


def _nothing_usable(row: dict, kind: str, where: str, field: str) -> DataError:
    found = ", ".join(repr(k) for k in list(row)[:8]) or "none"
    return DataError(where, f"missing field {field!r} (the row has fields: {found}); {ACCEPTED[kind]}", field)


def _sft(row: dict, where: str) -> Outcome:
    acc = ACCEPTED["sft"]
    if _has(row, "messages"):
        prompt, response = _messages_row(row, where)
        return [SFTRecord(prompt, response, where)], None
    if _has(row, "instances"):
        records = []
        for prompt, output, i in _self_instruct(row, where):
            response = _string(output, where, f"instances[{i}].output")
            records.append(SFTRecord(prompt, response, where))
        return records, None
    if _has(row, "instruction"):
        prompt = _alpaca_prompt(row, where)
        response = _string(_require(row, "output", where, acc), where, "output")
        return [SFTRecord(prompt, response, where)], None
    if _has(row, "chosen"):
        prompt, chosen, is_hh = _chosen_only(row, where, acc)
        if is_hh and not chosen.strip():
            return [], "dropped_empty_answer"
        return [SFTRecord(prompt, chosen, where)], None
    if not _has(row, "prompt"):
        raise _nothing_usable(row, "sft", where, "prompt")
    key = _one_of(row, ("response", "completion"), where, acc)
    prompt = _prompt(row, where)
    ctx, response = _answer(row[key], where, key)
    _reconcile(prompt, ctx, where, key)
    return [SFTRecord(prompt, response, where)], None


def _preference(row: dict, where: str) -> Outcome:
    if not (_has(row, "chosen") or _has(row, "rejected")):
        raise _nothing_usable(row, "preference", where, "chosen")
    prompt, chosen, rejected, is_hh = _pair(row, where, ACCEPTED["preference"])
    if is_hh and not (chosen.strip() and rejected.strip()):
        return [], "dropped_empty_answer"
    if chosen.strip() == rejected.strip():
        return [], "dropped_identical"
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin != margin):
        raise DataError(
            where, f"a preference margin is a number (how strongly chosen is preferred), got {_show(margin)}", "margin"
        )
    return [PreferenceRecord(prompt, chosen, rejected, where, None if margin is None else float(margin))], None


def _ranking(row: dict, where: str) -> Outcome:
    acc = ACCEPTED["ranking"]
    if not any(_has(row, k) for k in ("prompt", "responses", "ranking")):
        raise _nothing_usable(row, "ranking", where, "prompt")
    prompt = _prompt(row, where)
    responses = _list(_require(row, "responses", where, acc), where, "responses")
    ranking = _list(_require(row, "ranking", where, acc), where, "ranking")
    if len(responses) < 2:
        raise DataError(where, f"needs at least 2 responses to rank, got {len(responses)}", "responses")
    texts = tuple(_string(r, where, f"responses[{i}]") for i, r in enumerate(responses))
    for i, r in enumerate(ranking):
        if not isinstance(r, int) or isinstance(r, bool):
            raise DataError(where, f"expected an int rank, got {type_name(r)}", f"ranking[{i}]")
    k = len(texts)
    if len(ranking) != k:
        raise DataError(
            where,
            f"has {len(ranking)} ranks for {k} responses; give one rank per response",
            "ranking",
        )
    if sorted(ranking) != list(range(1, k + 1)):
        raise DataError(
            where,
            f"{_show(ranking)} is not a permutation of 1..{k}: ranking[i] is the rank of "
            "responses[i], 1 = best, each rank used once",
            "ranking",
        )
    if len({t.strip() for t in texts}) == 1:
        return [], "dropped_identical"
    return [RankingRecord(prompt, texts, tuple(ranking), where)], None


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    shown = _show(value) if isinstance(value, (str, int, float)) else type_name(value)
    raise DataError(where, f"expected true or false, got {shown}", "label")


def _unpaired(row: dict, where: str) -> Outcome:
    acc = ACCEPTED["unpaired"]
    if not _has(row, "label") and (_has(row, "chosen") or _has(row, "rejected")):
        prompt, chosen, rejected, is_hh = _pair(row, where, acc)
        if is_hh and not (chosen.strip() and rejected.strip()):
            return [], "dropped_empty_answer"
        if chosen.strip() == rejected.strip():
            return [], "dropped_identical"
        return [
            UnpairedRecord(prompt, chosen, True, where),
            UnpairedRecord(prompt, rejected, False, where),
        ], None
    if not any(_has(row, k) for k in ("prompt", "response", "completion", "label")):
        raise _nothing_usable(row, "unpaired", where, "prompt")
    key = _one_of(row, ("response", "completion"), where, acc)
    desirable = _label(_require(row, "label", where, acc), where)
    prompt = _prompt(row, where) if _has(row, "prompt") else None
    ctx, response = _answer(row[key], where, key)
    prompt = _reconcile(prompt, ctx, where, key)
    if prompt is None:
        raise DataError(where, f"missing field 'prompt'; {acc}", "prompt")
    return [UnpairedRecord(prompt, response, desirable, where)], None


def _meta(row: dict, used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


def _prompt_kind(row: dict, where: str) -> Outcome:
    if _has(row, "messages"):
        msgs = _messages(row["messages"], where, "messages")
        meta = _meta(row, ("messages", "system"))
        if msgs[-1].role == "assistant":
            meta["response"] = msgs[-1].content
            msgs = msgs[:-1]
            if not msgs:
                raise DataError(where, "messages has no user turn", "messages")
        prompt = _add_system(row, _check_prompt(msgs, where, "messages"), where)
        return [PromptRecord(prompt, where, meta)], None
    if _has(row, "instances"):
        base = _meta(row, ("instruction", "instances", "system"))
        records = []
        for prompt, _output, i in _self_instruct(row, where):
            meta = dict(base)
            inst = row["instances"][i]
            meta.update({k: v for k, v in inst.items() if k != "input"})
            records.append(PromptRecord(prompt, where, meta))
        return records, None
    if _has(row, "instruction"):
        prompt = _alpaca_prompt(row, where)
        return [PromptRecord(prompt, where, _meta(row, ("instruction", "input", "system")))], None
    if _has(row, "prompt"):
        return [PromptRecord(_prompt(row, where), where, _meta(row, ("prompt", "system")))], None
    if _has(row, "chosen"):
        prompt, _, _ = _chosen_only(row, where, ACCEPTED["prompt"])
        return [PromptRecord(prompt, where, _meta(row, ("system",)))], None
    raise _nothing_usable(row, "prompt", where, "prompt")


PARSERS: dict[str, Callable[[dict, str], Outcome]] = {
    "sft": _sft,
    "preference": _preference,
    "ranking": _ranking,
    "unpaired": _unpaired,
    "prompt": _prompt_kind,
}
KINDS = tuple(PARSERS)


def check_kind(kind: Any) -> str:
    """``kind`` if it is a known data kind, else ConfigError with the closest name."""
    if kind in PARSERS:
        return kind
    raise ConfigError(f"unknown data kind {kind!r}{did_you_mean(kind, KINDS)} (choose one of: {', '.join(KINDS)})")


def records_from_row(row: Any, kind: str, where: str = "") -> Outcome:
    """Turn one raw row into records of ``kind``.

    Returns ``(records, dropped)``: ``records`` is a list (several for self-instruct rows, or a
    preference row read as unpaired), ``dropped`` is None or the name of the counter the row
    counts against when it is skipped (``"dropped_identical"``, ``"dropped_empty_answer"``).
    Raises DataError for a row that cannot be used, ConfigError for an unknown kind.
    """
    parse = PARSERS[check_kind(kind)]
    if not isinstance(row, dict):
        raise DataError(where, f"expected an object (a row with named fields), got {type_name(row)}")
    return parse(row, where)
