"""Anthropic HH-RLHF transcripts: ``"\\n\\nHuman: ... \\n\\nAssistant: ..."`` strings.

An HH-RLHF row is ``{"chosen": transcript, "rejected": transcript}`` with no prompt field: both
transcripts repeat the whole conversation and differ only in the final Assistant turn.

* :func:`parse_hh_transcript` turns one transcript into messages (``Human`` → ``user``,
  ``Assistant`` → ``assistant``).
* :func:`split_hh_pair` turns a chosen/rejected pair into ``(prompt, chosen, rejected)``: the
  shared turns become the prompt, the two final Assistant turns the answers.

Parsing rules (decisions, checked against the public harmless-base test split):

* A turn starts at ``"\\n\\nHuman:"`` or ``"\\n\\nAssistant:"`` (or ``"Human:"`` at the very start
  of the text, after whitespace). ``"Human:"`` inside a turn without the blank line before it is
  ordinary text.
* Each turn's text is stripped of surrounding whitespace (the space after the colon is format).
* Consecutive turns of the same speaker are merged, joined by a blank line. The public data has a
  few ``Assistant: ... \\n\\nAssistant: ...`` runs; merging keeps roles alternating, which chat
  templates require, and keeps every word.
* A final answer may be empty (the public data has a few); the caller decides what to do with it.
  An empty turn inside the shared prompt is an error.
"""

from __future__ import annotations

import re

from alignlab.data.records import Message
from alignlab.errors import DataError

_SPEAKERS = {"Human": "user", "Assistant": "assistant"}
_TURN_MARK = re.compile(r"\n\n(Human|Assistant):")
_HINT = (
    "an HH-RLHF transcript looks like '\\n\\nHuman: question\\n\\nAssistant: answer'; "
    "a preference row that is not HH-RLHF needs a 'prompt' field"
)


def parse_hh_transcript(text: str, *, where: str = "", field: str | None = None) -> list[Message]:
    """Split one HH-RLHF transcript into messages; raise DataError if it does not parse."""
    if not isinstance(text, str):
        raise DataError(where, f"expected a transcript string, got {type(text).__name__}", field)
    body = text.lstrip()
    if not body.startswith("Human:"):
        head = body[:40].replace("\n", "\\n")
        raise DataError(where, f"transcript does not start with 'Human:' (it starts {head!r}); {_HINT}", field)
    # Re-insert the blank line so the first turn is found by the same pattern as the others.
    pieces = _TURN_MARK.split("\n\n" + body)
    # pieces = ["", speaker1, text1, speaker2, text2, ...]
    messages: list[Message] = []
    for speaker, turn in zip(pieces[1::2], pieces[2::2]):
        role, content = _SPEAKERS[speaker], turn.strip()
        if messages and messages[-1].role == role:
            joined = "\n\n".join(t for t in (messages[-1].content, content) if t)
            messages[-1] = Message(role, joined)
        else:
            messages.append(Message(role, content))
    return messages


def split_hh_transcript(text: str, *, where: str = "", field: str | None = None) -> tuple[tuple[Message, ...], str]:
    """One transcript as ``(prompt_messages, final_answer)``; the answer may be empty."""
    messages = parse_hh_transcript(text, where=where, field=field)
    if messages[-1].role != "assistant":
        raise DataError(
            where,
            "transcript ends with a Human turn; it must end with the Assistant's answer",
            field,
        )
    for i, m in enumerate(messages[:-1]):
        if not m.content:
            raise DataError(where, f"turn {i + 1} ({m.role}) of the transcript is empty", field)
    return tuple(messages[:-1]), messages[-1].content


def split_hh_pair(chosen_text: str, rejected_text: str, *, where: str = "") -> tuple[tuple[Message, ...], str, str]:
    """Split an HH-RLHF pair into ``(prompt_messages, chosen, rejected)``.

    The prompt is the turns both transcripts share; the answers are their final Assistant turns
    (possibly empty strings). Raises DataError when a transcript does not parse or when the two
    differ anywhere but in the last turn.
    """
    prompt_c, chosen = split_hh_transcript(chosen_text, where=where, field="chosen")
    prompt_r, rejected = split_hh_transcript(rejected_text, where=where, field="rejected")
    if prompt_c != prompt_r:
        n = min(len(prompt_c), len(prompt_r))
        turn = next((i for i in range(n) if prompt_c[i] != prompt_r[i]), n)
        raise DataError(
            where,
            f"chosen and rejected transcripts differ at turn {turn + 1} "
            f"({len(prompt_c) + 1} vs {len(prompt_r) + 1} turns); they must share every turn "
            "but the final Assistant answer",
            "rejected",
        )
    return prompt_c, chosen, rejected
