"""The LLM judge: preferences read from answer-token probabilities; asking in both orders cancels a position bias."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alignlab.feedback.judge import Judge, judge_report
from alignlab.models.presets import build_tiny


class BiasedJudgeModel(torch.nn.Module):
    """A stand-in judge that knows the truth (the answer containing "good" is better, worth logit
    ``skill``) and favours the first-shown answer by ``bias`` logits, more than it knows the truth."""

    def __init__(self, tokenizer, a_id, b_id, skill=1.0, bias=3.0):
        super().__init__()
        self.tokenizer, self.a_id, self.b_id, self.skill, self.bias = tokenizer, a_id, b_id, skill, bias
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids=None, logits_to_keep=0):
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], len(self.tokenizer))
        for i, row in enumerate(input_ids.tolist()):
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            a = re.search(r"Answer A:\n(.*?)\n\nAnswer B:", text, re.DOTALL).group(1)
            b = re.search(r"Answer B:\n(.*?)\n\n", text, re.DOTALL).group(1)
            logits[i, -1, self.a_id] = self.bias + self.skill * ("good" in a)
            logits[i, -1, self.b_id] = self.skill * ("good" in b)
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def test_swap_averaging_removes_an_injected_position_bias(tiny):
    _, tok = tiny
    probe = Judge(tiny[0], tok)
    judge = Judge(BiasedJudgeModel(tok, probe.a_id, probe.b_id), tok)
    n = 12
    good = [f"A good answer number {i}." for i in range(n)]
    bad = [f"A poor answer number {i}." for i in range(n)]
    a = [good[i] if i % 2 else bad[i] for i in range(n)]  # the better answer is a in half the pairs
    b = [bad[i] if i % 2 else good[i] for i in range(n)]
    truth = np.array([i % 2 == 1 for i in range(n)])
    cmp = judge.compare(["Which is better?"] * n, a, b)
    # one order alone: always "A", right only half the time
    assert (cmp.p_ab > 0.5).all() and (cmp.p_ba > 0.5).all()
    report = judge_report(cmp, truth)
    assert (
        report["agreement_one_order"] == 0.5 and report["first_rate"] == 1.0 and report["position_consistency"] == 0.0
    )
    # both orders averaged: the bias cancels, the skill remains
    assert report["agreement"] == 1.0
    s = 1 / (1 + np.exp(-np.array([4.0, 2.0])))  # sigma(bias + skill), sigma(bias - skill)
    want = np.where(truth, 0.5 * (s[0] + 1 - s[1]), 0.5 * (s[1] + 1 - s[0]))
    assert cmp.prob == pytest.approx(want, abs=1e-6)
    rows, stats = judge.label_pairs(["Which is better?"] * n, a, b)
    assert all("good" in r["chosen"] for r in rows) and stats["labels"] == n


def test_tiny_model_judge_is_symmetric_under_swapping(tiny):
    model, tok = tiny
    judge = Judge(model, tok, batch_size=3)
    prompts = ["How do I boil an egg?", "Tea or coffee?", "Best bread?", "Why is the sky blue?"]
    a = ["Boil it for seven minutes.", "Tea.", "Sourdough, baked hot.", "Rayleigh scattering."]
    b = ["Fry it.", "Coffee, strong.", "Any.", "Because it is."]
    ab, ba = judge.compare(prompts, a, b), judge.compare(prompts, b, a)
    assert ((ab.p_ab > 0) & (ab.p_ab < 1)).all()
    assert ab.prob + ba.prob == pytest.approx(np.ones(4), abs=1e-6)  # P(a > b) + P(b > a) = 1 by construction
    # batching and left padding do not change a reading
    single = Judge(model, tok, batch_size=1).prob_first(prompts, a, b)
    assert single == pytest.approx(ab.p_ab, abs=1e-5)
    rows, stats = judge.label_pairs(prompts, a, b)
    assert stats["pairs"] == 4 and len(rows) + stats["ties"] == 4
    assert {r["source"] for r in rows} == {"judge"}
