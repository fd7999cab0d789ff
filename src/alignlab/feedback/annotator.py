"""A simulated annotator: preference labels drawn from a gold reward by a known noise model.

Pairs (Bradley–Terry 1952). For prompt x and two responses shown in the order (a, b)::

    Δ = g(x, a) − g(x, b)
    tie                                  when |Δ| < tie_margin
    P(a ≻ b) = σ(Δ / τ + position_bias)  otherwise

``τ`` (``temperature``) sets how noisy the annotator is (τ → 0: always the gold's choice);
``position_bias`` is a logit added in favour of whichever response is shown first. Then, with
probability ``flip_rate``, the label is reversed (a careless click), which is how a panel's
annotators come to disagree at a set rate.

Rankings (Plackett–Luce; Luce 1959, Plackett 1975). K responses with gold scores g_i are ranked
by sorting ``g_i / τ + G_i`` with G_i i.i.d. standard Gumbel — the Gumbel-max trick, which makes
the probability that response i comes first exactly ``softmax(g / τ)_i``, and each later place
the same choice among those left. ``position_bias`` is added to the first-shown response's
utility ``g_0 / τ`` here too. With probability ``flip_rate`` two adjacent places are swapped.
``tie_margin`` applies to pairs only (a ranking has no ties).

Everything is drawn from one seeded ``numpy.random.Generator``: the same inputs and seed give
the same labels. ``gold`` is anything :func:`alignlab.gold.get_gold` accepts.

Rows come out in the shapes :mod:`alignlab.data` reads: preference rows ``{prompt, chosen,
rejected, source, annotator, confidence, chosen_position, gold}`` (``confidence`` = the model's
probability of the label it gave; ``chosen_position`` = ``"A"`` when the chosen one was shown
first) and ranking rows ``{prompt, responses, ranking, source, annotator, gold}`` with
``ranking[i]`` the rank of ``responses[i]``, 1 = best. Ties are not written (a tie carries no
preference) but counted in the stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from alignlab.errors import ConfigError
from alignlab.gold import get_gold


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def prompt_text(prompt) -> str:
    """The text a gold rule reads: a string as is, a messages list's last user message."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)) and prompt:
        users = [
            m["content"] if isinstance(m, dict) else m.content
            for m in prompt
            if (m["role"] if isinstance(m, dict) else m.role) == "user"
        ]
        if users:
            return users[-1]
    raise ConfigError(f"a prompt is a string or a messages list with a user message, got {prompt!r:.60}")


@dataclass
class LabelStats:
    """What a labelling pass produced."""

    pairs: int = 0
    """pairs compared"""
    labels: int = 0
    """preference rows written"""
    ties: int = 0
    """pairs inside the tie margin (not written)"""
    flips: int = 0
    """labels reversed by the flip rate"""
    first_chosen: int = 0
    """labels whose chosen response was the one shown first"""
    per_annotator: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "pairs",
                "labels",
                "ties",
                "flips",
                "first_chosen",
                "per_annotator",
            )
        }


class SimulatedAnnotator:
    """Labels pairs (Bradley–Terry) and rankings (Plackett–Luce) from a gold reward.

    ``temperature`` τ > 0 (logit units of the gold); ``position_bias`` logit for the first-shown
    response; ``tie_margin`` ≥ 0 (gold units); ``flip_rate`` in [0, 0.5]; ``seed`` for the
    generator; ``name`` goes in each row's ``annotator`` field.
    """

    def __init__(
        self,
        gold="demo",
        *,
        temperature: float = 1.0,
        position_bias: float = 0.0,
        tie_margin: float = 0.0,
        flip_rate: float = 0.0,
        seed: int = 0,
        name: str = "simulated",
    ):
        if not temperature > 0:
            raise ConfigError(f"annotator temperature must be > 0, got {temperature!r}")
        if not tie_margin >= 0:
            raise ConfigError(f"annotator tie_margin must be >= 0, got {tie_margin!r}")
        if not 0 <= flip_rate <= 0.5:
            raise ConfigError(
                f"annotator flip_rate must be in [0, 0.5] (above 0.5 it is an adversary), got {flip_rate!r}"
            )
        self.gold_spec = gold if isinstance(gold, str) else getattr(gold, "__name__", "custom")
        self.gold = get_gold(gold)
        self.temperature, self.position_bias = float(temperature), float(position_bias)
        self.tie_margin, self.flip_rate = float(tie_margin), float(flip_rate)
        self.name = name
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ scores
    def scores(self, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
        """Gold scores ``(N,)`` for N (prompt, response) pairs."""
        return np.asarray(
            self.gold([prompt_text(p) for p in prompts], list(responses)),
            dtype=np.float64,
        )

    def prob_first(self, g_first, g_second) -> np.ndarray:
        """P(first-shown ≻ second) = σ((g1 − g2)/τ + position_bias), before ties and flips."""
        return sigmoid((np.asarray(g_first) - np.asarray(g_second)) / self.temperature + self.position_bias)

    # ------------------------------------------------------------------ pairs
    def choose(self, g_first, g_second) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels for pairs from their gold scores: ``(choice, confidence, flipped)``.

        ``choice`` (N,) holds ``"A"`` (the first shown wins), ``"B"`` or ``"tie"``;
        ``confidence`` is the model's probability of the choice made (NaN for ties).
        """
        g1, g2 = (
            np.asarray(g_first, dtype=np.float64),
            np.asarray(g_second, dtype=np.float64),
        )
        p = self.prob_first(g1, g2)
        first = self.rng.random(p.shape) < p
        flipped = self.rng.random(p.shape) < self.flip_rate
        first = first ^ flipped
        tie = np.abs(g1 - g2) < self.tie_margin
        choice = np.where(tie, "tie", np.where(first, "A", "B"))
        conf = np.where(tie, np.nan, np.where(first, p, 1 - p))
        return choice, conf, flipped & ~tie

    def label_pairs(
        self,
        prompts: Sequence,
        first: Sequence[str],
        second: Sequence[str],
        stats: LabelStats | None = None,
    ) -> tuple[list[dict], LabelStats]:
        """Preference rows for pairs shown as (first[i], second[i]); ties are counted, not written."""
        if not (len(prompts) == len(first) == len(second)):
            raise ConfigError(
                f"label_pairs needs as many prompts as pairs, got {len(prompts)}, {len(first)}, {len(second)}"
            )
        stats = stats or LabelStats()
        if not len(prompts):
            return [], stats
        choice, conf, flipped = self.choose(self.scores(prompts, first), self.scores(prompts, second))
        rows = []
        for i, c in enumerate(choice):
            stats.pairs += 1
            if c == "tie":
                stats.ties += 1
                continue
            chosen, rejected = (first[i], second[i]) if c == "A" else (second[i], first[i])
            rows.append(self._pref_row(prompts[i], chosen, rejected, float(conf[i]), str(c)))
        stats.labels += len(rows)
        stats.flips += int(flipped.sum())
        stats.first_chosen += int((choice == "A").sum())
        stats.per_annotator[self.name] = stats.per_annotator.get(self.name, 0) + len(rows)
        return rows, stats

    def _pref_row(self, prompt, chosen, rejected, confidence, position) -> dict:
        return {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "source": "simulated",
            "annotator": self.name,
            "confidence": round(confidence, 6),
            "chosen_position": position,
            "gold": self.gold_spec,
        }

    # ------------------------------------------------------------------ rankings
    def rank(self, g) -> list[int]:
        """One Plackett–Luce ranking of gold scores ``g`` (K,): ``ranking[i]`` = rank of item i, 1 = best."""
        g = np.asarray(g, dtype=np.float64)
        utility = g / self.temperature
        utility[:1] += self.position_bias  # the first-shown response
        keys = utility + self.rng.gumbel(size=g.shape)
        order = list(np.argsort(-keys, kind="stable"))  # item indices, best first
        if len(order) > 1 and self.rng.random() < self.flip_rate:
            j = int(self.rng.integers(len(order) - 1))
            order[j], order[j + 1] = order[j + 1], order[j]
        ranking = [0] * len(order)
        for place, item in enumerate(order):
            ranking[int(item)] = place + 1
        return ranking

    def label_rankings(self, prompts: Sequence, responses: Sequence[Sequence[str]]) -> list[dict]:
        """Ranking rows, one per prompt, for its K ≥ 2 responses."""
        if len(prompts) != len(responses):
            raise ConfigError(
                f"label_rankings needs one list of responses per prompt, got {len(prompts)} and {len(responses)}"
            )
        rows = []
        for p, group in zip(prompts, responses):
            if len(group) < 2:
                raise ConfigError(
                    f"a ranking needs at least 2 responses, got {len(group)} for prompt {prompt_text(p)!r:.60}"
                )
            ranking = self.rank(self.scores([p] * len(group), group))
            rows.append(
                {
                    "prompt": p,
                    "responses": list(group),
                    "ranking": ranking,
                    "source": "simulated",
                    "annotator": self.name,
                    "gold": self.gold_spec,
                }
            )
        return rows


class AnnotatorPanel:
    """Several simulated annotators with the same gold and noise model, each with its own seed.

    With ``assign="all"`` every member labels every pair (rows for each, so agreement can be
    measured); with ``"one"`` each pair goes to one member drawn at random (a crowd).
    Two members' labels on a pair the gold separates clearly (τ small) differ with probability
    ``2·f·(1 − f)`` for flip rate f.
    """

    def __init__(self, size: int = 3, *, gold="demo", seed: int = 0, assign: str = "all", **noise):
        if size < 1:
            raise ConfigError(f"an annotator panel needs at least 1 member, got {size}")
        if assign not in ("all", "one"):
            raise ConfigError(f"panel assign must be 'all' or 'one', got {assign!r}")
        seeds = np.random.SeedSequence(seed).spawn(size + 1)
        self.members = [
            SimulatedAnnotator(gold, seed=int(s.generate_state(1)[0]), name=f"sim-{i}", **noise)
            for i, s in enumerate(seeds[:size])
        ]
        self.assign = assign
        self.rng = np.random.default_rng(seeds[-1])

    def label_pairs(
        self, prompts: Sequence, first: Sequence[str], second: Sequence[str]
    ) -> tuple[list[dict], LabelStats]:
        stats = LabelStats()
        if self.assign == "all":
            rows = []
            for m in self.members:
                rows += m.label_pairs(prompts, first, second, stats)[0]
            return rows, stats
        who = self.rng.integers(len(self.members), size=len(prompts))
        rows = []
        for j, m in enumerate(self.members):
            idx = [i for i in range(len(prompts)) if who[i] == j]
            rows += m.label_pairs(
                [prompts[i] for i in idx],
                [first[i] for i in idx],
                [second[i] for i in idx],
                stats,
            )[0]
        return rows, stats

    def label_rankings(self, prompts: Sequence, responses: Sequence[Sequence[str]]) -> list[dict]:
        if self.assign == "all":
            return [row for m in self.members for row in m.label_rankings(prompts, responses)]
        who = self.rng.integers(len(self.members), size=len(prompts))
        return [self.members[int(w)].label_rankings([p], [r])[0] for p, r, w in zip(prompts, responses, who)]


def gold_reward(prompts: Sequence[str], responses: Sequence[str], **kw) -> list[float]:
    """The default gold reward (``demo``), with the reward-function signature."""
    return get_gold("demo")(prompts, responses, **kw)
