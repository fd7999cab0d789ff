"""An LLM judge: which of two responses a causal LM prefers, read from its next-token probabilities.

The judge writes a rubric prompt (:data:`RUBRIC`) holding the request and the two responses,
labelled A and B, renders it with the model's chat template and runs one forward pass. The
preference is read at the first position of the judge's reply, restricted to the two answer
tokens::

    P(A) = exp(z_A) / (exp(z_A) + exp(z_B))        z = the last position's logits

— not parsed from free text, so every comparison gives a probability and none fails to parse.

Position bias: small judges favour whichever answer comes first (or second). So each pair is asked
twice, in both orders, and the two readings are averaged::

    P(a ≻ b) = ½ · (P_A(a, b) + 1 − P_A(b, a))

A bias that adds the same logit to "A" in both orders cancels out of this average. A pair is
*position-consistent* when both orders pick the same response; :func:`judge_report` gives that
rate and the judge's agreement with reference labels (gold-annotator or human).

Default judge: SmolLM2-135M-Instruct (preset ``smollm2-135m``); any loaded Hugging Face causal LM
and tokenizer work (tests use the ``tiny`` preset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from alignlab.errors import ConfigError

RUBRIC = """Compare two answers to the request below.

Request:
{prompt}

Answer A:
{a}

Answer B:
{b}

{criterion}
Reply with a single letter: A or B."""

CRITERION = "Which answer is better: more helpful, correct and clear, and harmless?"


def answer_token_ids(tokenizer, letters: tuple[str, str] = ("A", "B")) -> tuple[int, int]:
    """The token ids of the two answer letters (each must be a single token, and distinct)."""
    ids = []
    for letter in letters:
        toks = tokenizer.encode(letter, add_special_tokens=False)
        if len(toks) != 1:
            raise ConfigError(
                f"judge: the answer letter {letter!r} is {len(toks)} tokens for this tokenizer; pick letters that are one token each"
            )
        ids.append(toks[0])
    if ids[0] == ids[1]:
        raise ConfigError(f"judge: the answer letters {letters} map to the same token")
    return ids[0], ids[1]


@dataclass
class Comparison:
    """Judgements of N pairs (a_i, b_i); every field is an ``(N,)`` array."""

    p_ab: np.ndarray
    """P("A") with a shown first (the judge's probability that a is better, one order)"""
    p_ba: np.ndarray
    """P("A") with b shown first (the probability that b is better, the other order)"""

    @property
    def prob(self) -> np.ndarray:
        """P(a ≻ b), averaged over both orders: ½ (p_ab + 1 − p_ba)."""
        return 0.5 * (self.p_ab + 1.0 - self.p_ba)

    @property
    def consistent(self) -> np.ndarray:
        """Both orders pick the same response."""
        return (self.p_ab > 0.5) == (self.p_ba < 0.5)


class Judge:
    """Pairwise preferences from a causal LM's next-token probabilities of ``A`` and ``B``.

    ``rubric`` is a format string with ``{prompt}``, ``{a}``, ``{b}`` and ``{criterion}``;
    ``max_prompt_tokens`` keeps the end of overlong rubric prompts (where the question is).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        rubric: str = RUBRIC,
        criterion: str = CRITERION,
        batch_size: int = 8,
        max_prompt_tokens: int = 1536,
        name: str = "judge",
    ):
        for key in ("{prompt}", "{a}", "{b}", "{criterion}"):
            if key not in rubric:
                raise ConfigError(
                    f"judge rubric must contain {key} (it has the fields {{prompt}}, {{a}}, {{b}}, {{criterion}})"
                )
        self.model, self.tokenizer = model, tokenizer
        self.rubric, self.criterion = rubric, criterion
        self.batch_size, self.max_prompt_tokens, self.name = batch_size, max_prompt_tokens, name
        self.a_id, self.b_id = answer_token_ids(tokenizer)

    @classmethod
    def from_preset(cls, name: str = "smollm2-135m", *, device: str = "auto", seed: int = 0, **kw) -> Judge:
        """Load a judge model by preset or folder through :func:`alignlab.models.load.load_model`."""
        from alignlab.config import ModelConfig, from_dict
        from alignlab.models.load import load_model

        loaded = load_model(
            from_dict(ModelConfig, {"name_or_path": name, "device": device}), seed=seed, for_training=False
        )
        return cls(loaded.model, loaded.tokenizer, name=kw.pop("name", name), **kw)

    def render(self, prompt: str, first: str, second: str, criterion: str | None = None) -> list[int]:
        """The token ids of the judge's input for one ordered pair."""
        from alignlab.data.tokenize import encode_prompt

        text = self.rubric.format(prompt=prompt, a=first, b=second, criterion=criterion or self.criterion)
        ids = encode_prompt(self.tokenizer, text)
        return ids[-self.max_prompt_tokens :]

    @torch.no_grad()
    def prob_first(
        self, prompts: Sequence, first: Sequence[str], second: Sequence[str], criterion: str | None = None
    ) -> np.ndarray:
        """P("A") for each pair shown as (first, second): ``(N,)``, one order only."""
        from alignlab.data.collate import left_pad
        from alignlab.feedback.annotator import prompt_text

        rows = [self.render(prompt_text(p), a, b, criterion) for p, a, b in zip(prompts, first, second)]
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = []
        try:
            for start in range(0, len(rows), self.batch_size):
                ids, attn = left_pad(rows[start : start + self.batch_size], pad)  # (b, T)
                pos = (attn.cumsum(-1) - 1).clamp(min=0)  # positions restart after the left padding
                kwargs = {
                    "input_ids": ids.to(device),
                    "attention_mask": attn.to(device),
                    "position_ids": pos.to(device),
                }
                try:
                    logits = model(**kwargs, logits_to_keep=1).logits[:, -1, :]  # (b, V)
                except TypeError:  # a model without logits_to_keep
                    logits = model(**kwargs).logits[:, -1, :]
                pair = torch.stack([logits[:, self.a_id], logits[:, self.b_id]], dim=-1).float()  # (b, 2)
                out.append(torch.softmax(pair, dim=-1)[:, 0].cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def compare(
        self, prompts: Sequence, a: Sequence[str], b: Sequence[str], criterion: str | None = None
    ) -> Comparison:
        """Ask in both orders (a first, then b first)."""
        return Comparison(self.prob_first(prompts, a, b, criterion), self.prob_first(prompts, b, a, criterion))

    def label_pairs(
        self,
        prompts: Sequence,
        a: Sequence[str],
        b: Sequence[str],
        *,
        criterion: str | None = None,
        tie_margin: float = 0.0,
    ) -> tuple[list[dict], dict]:
        """Preference rows from the swap-averaged judgement; pairs with |P − ½| < tie_margin are ties
        (counted, not written). ``confidence`` is P(chosen ≻ rejected)."""
        cmp = self.compare(prompts, a, b, criterion)
        rows, ties = [], 0
        for i, p in enumerate(cmp.prob):
            if abs(p - 0.5) < tie_margin or p == 0.5:
                ties += 1
                continue
            win = p > 0.5
            rows.append(
                {
                    "prompt": prompts[i],
                    "chosen": a[i] if win else b[i],
                    "rejected": b[i] if win else a[i],
                    "source": "judge",
                    "annotator": self.name,
                    "confidence": round(float(p if win else 1 - p), 6),
                    "position_consistent": bool(cmp.consistent[i]),
                }
            )
        stats = {
            "pairs": len(cmp.prob),
            "labels": len(rows),
            "ties": ties,
            "position_consistency": float(cmp.consistent.mean()) if len(cmp.prob) else None,
        }
        return rows, stats


def judge_report(cmp: Comparison, reference: Sequence[bool] | None = None) -> dict:
    """How the judge behaved: ``position_consistency`` (both orders agree), ``first_rate`` (how
    often one ordered reading picks the first-shown answer: 0.5 for an unbiased judge), and with
    ``reference`` (True where a is the better one, from the gold annotator or humans):
    ``agreement`` of the swap-averaged choice and ``agreement_one_order`` of the a-first reading."""
    n = len(cmp.p_ab)
    out = {
        "pairs": n,
        "position_consistency": float(cmp.consistent.mean()) if n else None,
        "first_rate": float(((cmp.p_ab > 0.5).sum() + (cmp.p_ba > 0.5).sum()) / (2 * n)) if n else None,
    }
    if reference is not None:
        ref = np.asarray(reference, dtype=bool)
        if ref.shape != (n,):
            raise ConfigError(f"judge_report: {len(ref)} reference labels for {n} pairs")
        out["agreement"] = float(((cmp.prob > 0.5) == ref).mean()) if n else None
        out["agreement_one_order"] = float(((cmp.p_ab > 0.5) == ref).mean()) if n else None
    return out
