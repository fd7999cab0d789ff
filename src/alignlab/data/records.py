"""Typed records: what a validated row becomes (the row shapes and their parsers are :mod:`alignlab.data.rows`).

A record is a frozen dataclass. Its ``prompt`` is a conversation: a tuple of :class:`Message`
(role ``system``/``user``/``assistant``) that ends with a user message. ``where`` says where the
row came from (``"file:line"`` or ``"file:row N"``); it is provenance, not content, so it takes no
part in ``==`` or ``hash``: the same data read from a .jsonl and a .parquet file compare equal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Union

ROLES = ("system", "user", "assistant")
ROLE_HINTS = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    """``"system"``, ``"user"`` or ``"assistant"``."""
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Prompt = tuple[Message, ...]


def to_chat(prompt: Prompt, response: str | None = None) -> list[dict[str, str]]:
    """The conversation as the ``list[dict]`` a chat template takes (response appended if given)."""
    chat = [m.as_dict() for m in prompt]
    if response is not None:
        chat.append({"role": "assistant", "content": response})
    return chat


@dataclass(frozen=True)
class SFTRecord:
    """A demonstration: prompt x and the response y to imitate."""

    prompt: Prompt
    response: str
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class PreferenceRecord:
    """A comparison: for prompt x, chosen y_w is preferred to rejected y_l."""

    prompt: Prompt
    chosen: str
    rejected: str
    where: str = field(default="", compare=False)
    margin: float | None = None
    """How strongly y_w is preferred (Llama 2's preference-strength margin, reward units), if the data says."""


@dataclass(frozen=True)
class RankingRecord:
    """K ≥ 2 responses to one prompt; ``ranks[i]`` is the rank of ``responses[i]`` (1 = best)."""

    prompt: Prompt
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    where: str = field(default="", compare=False)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """Yield ``(chosen, rejected)`` for each of the K(K−1)/2 pairs, best-ranked pairs first.

        A pair whose two texts are identical (after stripping whitespace) is skipped: it carries
        no preference.
        """
        ordered = [r for _, r in sorted(zip(self.ranks, self.responses))]
        for i, better in enumerate(ordered):
            for worse in ordered[i + 1 :]:
                if better.strip() != worse.strip():
                    yield better, worse


@dataclass(frozen=True)
class UnpairedRecord:
    """One response with a thumbs-up (``desirable=True``) or thumbs-down label (KTO)."""

    prompt: Prompt
    response: str
    desirable: bool
    where: str = field(default="", compare=False)


@dataclass(frozen=True)
class PromptRecord:
    """A prompt for RL; ``meta`` holds the row's other fields (e.g. a reference answer)."""

    prompt: Prompt
    where: str = field(default="", compare=False)
    meta: dict[str, Any] = field(default_factory=dict, hash=False)


Record = Union[SFTRecord, PreferenceRecord, RankingRecord, UnpairedRecord, PromptRecord]  # noqa: UP007 - a runtime alias
