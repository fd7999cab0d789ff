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
    """Counts of what tokenisation changed, written to the run log (with the first cut records' file:line)."""

    examples: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0
    cut_where: list = field(default_factory=list)

    def note_cut(self, where: str) -> None:
        if where and len(self.cut_where) < 10 and where not in self.cut_where:
            self.cut_where.append(where)

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
    ids = tokenizer.apply_chat_template(
        messages_of(prompt), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def encode_response(tokenizer, text: str) -> list[int]:
    """Response token ids followed by EOS."""
    return list(tokenizer.encode(text, add_special_tokens=False)) + [tokenizer.eos_token_id]


def fit_lengths(
    prompt_ids: list[int],
    response_ids: list[int],
    max_length: int,
    max_prompt_length: int,
    stats: TokenStats,
    where: str = "",
):
    """Cut the prompt from the left and the response from the right; count each cut (and say where)."""
    if len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        stats.prompts_truncated += 1
        stats.note_cut(where)
    room = max_length - len(prompt_ids)
    if len(response_ids) > room:
        response_ids = response_ids[:room]
        stats.responses_truncated += 1
        stats.note_cut(where)
    return prompt_ids, response_ids


def tokenize_pair(
    tokenizer, prompt, response: str, *, max_length: int, max_prompt_length: int, stats: TokenStats, where: str = ""
) -> Example:
    prompt_ids, response_ids = fit_lengths(
        encode_prompt(tokenizer, prompt),
        encode_response(tokenizer, response),
        max_length,
        max_prompt_length,
        stats,
        where,
    )
    stats.examples += 1
    return Example(prompt_ids, response_ids, where)


def tokenize_sft(records, tokenizer, *, max_length: int, max_prompt_length: int) -> tuple[list[Example], TokenStats]:
    """SFT records -> examples (prompt masked, response + EOS)."""
    stats = TokenStats()
    out = [
        tokenize_pair(
            tokenizer,
            r.prompt,
            r.response,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            stats=stats,
            where=r.where,
        )
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


# ----------------------------------------------------------------------------- preference data
@dataclass
class PairExample:
    """One tokenised comparison: ``prompt_ids + chosen_ids`` is preferred to ``prompt_ids + rejected_ids``.

    The prompt is cut once; both responses are then cut to the same budget
    ``max_length - len(prompt_ids)``, so neither side gets more context than the other.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    where: str = ""
    margin: float | None = None  # the record's preference-strength margin, if any

    def chosen(self) -> Example:
        return Example(self.prompt_ids, self.chosen_ids, self.where)

    def rejected(self) -> Example:
        return Example(self.prompt_ids, self.rejected_ids, self.where)


@dataclass
class RankedExample:
    """K ≥ 2 tokenised responses to one prompt; ``ranks[i]`` is the rank of ``responses_ids[i]`` (1 = best)."""

    prompt_ids: list[int]
    responses_ids: list[list[int]]
    ranks: list[int]
    where: str = ""

    def examples(self) -> list[Example]:
        return [Example(self.prompt_ids, r, self.where) for r in self.responses_ids]


def _fit_responses(
    tokenizer, prompt, responses, max_length: int, max_prompt_length: int, stats: TokenStats, where: str = ""
):
    """(prompt_ids, [response_ids, ...]): the prompt cut once, each response cut to the same room."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    out = []
    for text in responses:
        # the first call may cut the prompt; later calls see it already short enough
        prompt_ids, ids = fit_lengths(
            prompt_ids, encode_response(tokenizer, text), max_length, max_prompt_length, stats, where
        )
        out.append(ids)
    stats.examples += 1
    return prompt_ids, out


def preference_pairs(records) -> list[tuple]:
    """``(prompt, chosen, rejected, where, margin)`` of preference records; a ranking record gives its K(K−1)/2 pairs (no margin)."""
    out = []
    for r in records:
        if hasattr(r, "pairs"):  # RankingRecord
            out.extend((r.prompt, c, j, r.where, None) for c, j in r.pairs())
        else:
            out.append((r.prompt, r.chosen, r.rejected, r.where, getattr(r, "margin", None)))
    return out


def tokenize_pairs(
    records, tokenizer, *, max_length: int, max_prompt_length: int
) -> tuple[list[PairExample], TokenStats]:
    """Preference (or ranking, expanded to pairs) records -> :class:`PairExample`.

    ``stats.examples`` counts pairs; ``prompts_truncated`` counts each pair's prompt at most once;
    ``responses_truncated`` counts each cut response (chosen and rejected separately).
    """
    stats = TokenStats()
    out = []
    for prompt, chosen, rejected, where, margin in preference_pairs(records):
        prompt_ids, (c, j) = _fit_responses(
            tokenizer, prompt, (chosen, rejected), max_length, max_prompt_length, stats, where
        )
        out.append(PairExample(prompt_ids, c, j, where, margin))
    return out, stats


def tokenize_rankings(
    records, tokenizer, *, max_length: int, max_prompt_length: int
) -> tuple[list[RankedExample], TokenStats]:
    """Records -> :class:`RankedExample` groups (for K-wise / Plackett–Luce losses).

    A ranking record keeps its K responses together; a preference record is a group of K = 2
    with ranks (1, 2). ``stats.examples`` counts groups.
    """
    stats = TokenStats()
    out = []
    for r in records:
        if hasattr(r, "ranks"):
            texts, ranks = list(r.responses), list(r.ranks)
        else:
            texts, ranks = [r.chosen, r.rejected], [1, 2]
        prompt_ids, ids = _fit_responses(tokenizer, r.prompt, texts, max_length, max_prompt_length, stats, r.where)
        out.append(RankedExample(prompt_ids, ids, ranks, r.where))
    return out, stats


def tokenize_unpaired(
    records, tokenizer, *, max_length: int, max_prompt_length: int
) -> tuple[list[Example], TokenStats]:
    """Unpaired (KTO) records -> examples with ``meta["desirable"]`` (bool)."""
    stats = TokenStats()
    out = []
    for r in records:
        ex = tokenize_pair(
            tokenizer,
            r.prompt,
            r.response,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            stats=stats,
            where=r.where,
        )
        ex.meta["desirable"] = bool(r.desirable)
        out.append(ex)
    return out, stats


def mismatch_partners(examples: list[Example], seed: int) -> list[int]:
    """For each example i, the index j of another example whose prompt differs (KTO's mismatched pair).

    A fixed, seeded assignment over the whole data set (not re-drawn per batch), so the reference
    log-probs of every (prompt_i, response_j) can be computed once and cached. Falls back to
    j = i only when every example has the same prompt.
    """
    import random

    n = len(examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for pos, i in enumerate(order):
        j = i
        for step in range(1, n):
            cand = order[(pos + step) % n]
            if examples[cand].prompt_ids != examples[i].prompt_ids:
                j = cand
                break
        partners[i] = j
    return partners
