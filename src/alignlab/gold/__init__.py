"""Gold rewards: transparent functions of the text that stand in for a true preference.

One registry (:data:`GOLD_REWARDS`) and one resolver (:func:`get_gold`) serve labelling, RL
rewards (``reward.source: gold:<spec>``) and evaluation. Torch-free, and imports nothing from
alignlab but the error types, so any layer may use it.

    >>> from alignlab.gold import get_gold
    >>> get_gold("concise(target=5)+house_style")(["q"], ["Sure thing. Hope this helps!"])
    [2.0]
"""

from __future__ import annotations

from alignlab.gold.registry import (
    GOLD_REWARDS,
    Gold,
    Weighted,
    demo,
    describe,
    get_gold,
    parse_spec,
    weighted,
)
from alignlab.gold.rules import (
    HOUSE_PHRASE,
    char_fraction,
    concise,
    contains_word,
    harmless,
    house_style,
    is_harmful_request,
    is_refusal,
    keywords,
    length,
    matches,
    sentiment,
    well_formed,
)

__all__ = [
    "GOLD_REWARDS",
    "HOUSE_PHRASE",
    "Gold",
    "Weighted",
    "char_fraction",
    "concise",
    "contains_word",
    "demo",
    "describe",
    "get_gold",
    "harmless",
    "house_style",
    "is_harmful_request",
    "is_refusal",
    "keywords",
    "length",
    "matches",
    "parse_spec",
    "sentiment",
    "weighted",
    "well_formed",
]
