"""Preference data: pairs share one cut prompt and one response budget; batches put chosen rows
first and rejected rows after; rankings expand to pairs or stay grouped; KTO examples carry labels."""

import torch

from alignlab.data.collate import collate_pairs, collate_rankings, collate_unpaired
from alignlab.data.records import Message, PreferenceRecord, RankingRecord, UnpairedRecord
from alignlab.data.tokenize import (
    IGNORE,
    Example,
    encode_prompt,
    mismatch_partners,
    tokenize_pairs,
    tokenize_rankings,
    tokenize_unpaired,
)
from alignlab.models.presets import tiny_tokenizer


def pref(prompt, chosen, rejected, where="p.jsonl:1"):
    return PreferenceRecord((Message("user", prompt),), chosen, rejected, where)


def test_prompt_is_cut_once_and_both_responses_share_the_budget():
    tok = tiny_tokenizer()
    long_prompt = "x" * 80
    (ex,), stats = tokenize_pairs([pref(long_prompt, "a" * 50, "b" * 10)], tok, max_length=60, max_prompt_length=40)
    assert len(ex.prompt_ids) == 40
    assert ex.prompt_ids == encode_prompt(tok, ((Message("user", long_prompt)),))[-40:]  # cut from the left
    assert len(ex.chosen_ids) == 20  # cut from the right to max_length - 40; no EOS (it did not end)
    assert ex.chosen_ids[-1] != tok.eos_token_id
    assert ex.rejected_ids == tok.encode("b" * 10, add_special_tokens=False) + [tok.eos_token_id]  # fits: untouched
    assert stats.as_dict() == {
        "examples": 1,
        "prompts_truncated": 1,
        "responses_truncated": 1,
        "cut_where": ["p.jsonl:1"],
    }


def test_collate_pairs_puts_chosen_rows_then_rejected_rows():
    from alignlab.data.tokenize import PairExample

    pairs = [PairExample([1, 2], [10, 3], [11, 12, 3], "a"), PairExample([1], [20, 3], [21, 3], "b")]
    batch = collate_pairs(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [1, 2, 10, 3, 0],  # chosen of pair 0
        [1, 20, 3, 0, 0],  # chosen of pair 1
        [1, 2, 11, 12, 3],  # rejected of pair 0
        [1, 21, 3, 0, 0],  # rejected of pair 1
    ]
    assert batch["loss_mask"].tolist() == [  # (2B, T-1): next-token positions of response tokens
        [False, True, True, False],
        [True, True, False, False],
        [False, True, True, True],
        [True, True, False, False],
    ]
    assert batch["labels"][0].tolist() == [IGNORE, IGNORE, 10, 3, IGNORE]
    assert batch["n_pairs"] == 2 and batch["where"] == ["a", "b"]


def test_ranking_expands_to_pairs_or_stays_grouped():
    tok = tiny_tokenizer()
    rec = RankingRecord((Message("user", "q"),), ("mid", "best", "worst"), (2, 1, 3), "r.jsonl:1")
    pairs, stats = tokenize_pairs([rec], tok, max_length=64, max_prompt_length=32)
    text = [(tok.decode(p.chosen_ids[:-1]), tok.decode(p.rejected_ids[:-1])) for p in pairs]
    assert text == [("best", "mid"), ("best", "worst"), ("mid", "worst")]
    assert stats.examples == 3

    groups, gstats = tokenize_rankings([rec, pref("q2", "yes", "no")], tok, max_length=64, max_prompt_length=32)
    assert [g.ranks for g in groups] == [[2, 1, 3], [1, 2]] and gstats.examples == 2
    batch = collate_rankings(groups, pad_id=0)
    assert batch["input_ids"].shape[0] == 5 and batch["group_sizes"] == [3, 2]
    assert tok.decode(batch["input_ids"][1][batch["attention_mask"][1].bool()]).endswith("best<|im_end|>")


def test_unpaired_examples_and_mismatched_partners():
    tok = tiny_tokenizer()
    recs = [UnpairedRecord((Message("user", f"q{i % 3}"),), f"r{i}", i % 2 == 0, f"u:{i}") for i in range(6)]
    examples, stats = tokenize_unpaired(recs, tok, max_length=64, max_prompt_length=32)
    assert [e.meta["desirable"] for e in examples] == [True, False, True, False, True, False]
    partners = mismatch_partners(examples, seed=0)
    assert all(examples[j].prompt_ids != examples[i].prompt_ids for i, j in enumerate(partners))
    assert partners == mismatch_partners(examples, seed=0)  # fixed by the seed
    mism = [Example(e.prompt_ids, examples[j].response_ids) for e, j in zip(examples[:2], partners[:2])]
    batch = collate_unpaired(examples[:2], 0, mism)
    assert batch["input_ids"].shape[0] == 4 and batch["n_examples"] == 2
    assert batch["desirable"].tolist() == [True, False] and batch["desirable"].dtype == torch.bool


def test_packed_pairs_give_the_same_sequence_logps_as_padded_rows():
    """Packing changes the layout, not the numbers: per-sequence sums and lengths match."""
    import torch

    from alignlab.data.collate import collate_pairs
    from alignlab.models.presets import build_tiny
    from alignlab.trainers.reference import seq_logps

    model, tok = build_tiny(seed=3)
    model.eval()
    records = [
        PreferenceRecord(
            (Message("user", f"q{i}"),), "good " * (i + 1), "bad answer " * (3 - i % 3), where=f"p.jsonl:{i + 1}"
        )
        for i in range(5)
    ]
    pairs, _ = tokenize_pairs(records, tok, max_length=96, max_prompt_length=48)
    padded = collate_pairs(pairs, tok.pad_token_id)
    packed = collate_pairs(pairs, tok.pad_token_id, pack_width=96)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows
    assert packed["n_tokens"] == padded["n_tokens"]  # the same real tokens
    assert torch.equal(packed["seq_lengths"], padded["seq_lengths"])
    with torch.no_grad():
        a, b = seq_logps(model, padded), seq_logps(model, packed)
    assert torch.allclose(a, b, atol=1e-4), (a, b)
