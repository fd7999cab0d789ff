"""Records -> token ids, through the tokenizer's chat template.

* The prompt (a conversation) is rendered with ``apply_chat_template(add_generation_prompt=True)``;
  tokenizers without a template get alignlab's ChatML fallback (see ``models.presets``).
* The response is encoded on its own and ends with the tokenizer's EOS token, so generation
  learns to stop. A response cut because it is too long keeps no EOS (it did not end there).
* Labels are ``-100`` on prompt tokens (and, after collation, on padding): losses cover response
  tokens only.
* Too long: the prompt is cut from the **left** (oldest tokens go, the latest turn stays) to
  ``max_prompt_length``; then the response is cut from the **right** to fit ``max_length``.
  Nothing is dropped silently: :class:`TokenStats` counts every cut for the log.
"""
from __future__ import annotations

from dataclasses import dataclass, field

IGNORE = -100


@dataclass
class TokenStats:
    """Counts of what tokenisation changed, written to the run log."""

    examples: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Example:
    """One tokenised (prompt, response): ``input_ids = prompt_ids + response_ids``."""

    prompt_ids: list[int]
    response_ids: list[int]
    where: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def labels(self) -> list[int]:
        return [IGNORE] * len(self.prompt_ids) + list(self.response_ids)


def messages_of(prompt) -> list[dict]:
    """A record's prompt (tuple of messages, or a plain string) as chat-template dicts."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m.role, "content": m.content} for m in prompt]


def encode_prompt(tokenizer, prompt) -> list[int]:
    ids = tokenizer.apply_chat_template(messages_of(prompt), add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids)


def encode_response(tokenizer, text: str) -> list[int]:
    """Response token ids followed by EOS."""
    return list(tokenizer.encode(text, add_special_tokens=False)) + [tokenizer.eos_token_id]


def fit_lengths(prompt_ids: list[int], response_ids: list[int], max_length: int, max_prompt_length: int, stats: TokenStats):
    """Cut the prompt from the left and the response from the right; count each cut."""
    if len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        stats.prompts_truncated += 1
    room = max_length - len(prompt_ids)
    if len(response_ids) > room:
        response_ids = response_ids[:room]
        stats.responses_truncated += 1
    return prompt_ids, response_ids


def tokenize_pair(tokenizer, prompt, response: str, *, max_length: int, max_prompt_length: int, stats: TokenStats, where: str = "") -> Example:
    prompt_ids, response_ids = fit_lengths(
        encode_prompt(tokenizer, prompt), encode_response(tokenizer, response), max_length, max_prompt_length, stats
    )
    stats.examples += 1
    return Example(prompt_ids, response_ids, where)


def tokenize_sft(records, tokenizer, *, max_length: int, max_prompt_length: int) -> tuple[list[Example], TokenStats]:
    """SFT records -> examples (prompt masked, response + EOS)."""
    stats = TokenStats()
    out = [
        tokenize_pair(tokenizer, r.prompt, r.response, max_length=max_length, max_prompt_length=max_prompt_length, stats=stats, where=r.where)
        for r in records
    ]
    return out, stats


def pack(examples: list[Example], max_length: int) -> list[list[Example]]:
    """Greedy first-fit packing in order: groups of examples whose total length fits ``max_length``."""
    groups: list[list[Example]] = []
    current: list[Example] = []
    used = 0
    for ex in examples:
        n = len(ex.input_ids)
        if current and used + n > max_length:
            groups.append(current)
            current, used = [], 0
        current.append(ex)
        used += n
    if current:
        groups.append(current)
    return groups
