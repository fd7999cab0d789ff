"""Masking and truncation, checked label by label on hand-built examples."""

import math

import torch

from alignlab.data.collate import pack_rows, pad_examples
from alignlab.data.records import Message, SFTRecord
from alignlab.data.tokenize import IGNORE, Example, TokenStats, encode_prompt, fit_lengths, pack, tokenize_sft
from alignlab.losses.sft import sft_loss
from alignlab.models.presets import tiny_tokenizer


def rec(prompt, response):
    return SFTRecord(prompt=(Message("user", prompt),), response=response, where="t.jsonl:1")


def test_labels_mask_prompt_and_end_with_eos():
    tok = tiny_tokenizer()
    (ex,), stats = tokenize_sft([rec("Hi?", "Yo")], tok, max_length=64, max_prompt_length=32)
    prompt_text = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex.prompt_ids) == prompt_text
    # response: 'Y', 'o', EOS -- byte tokens then the end-of-turn token
    assert ex.response_ids == tok.encode("Yo", add_special_tokens=False) + [tok.eos_token_id]
    assert len(ex.response_ids) == 3
    labels = ex.labels
    n = len(ex.prompt_ids)
    assert labels[:n] == [IGNORE] * n
    assert labels[n:] == ex.response_ids
    assert labels[-1] == tok.eos_token_id
    assert stats.as_dict() == {"examples": 1, "prompts_truncated": 0, "responses_truncated": 0, "cut_where": []}


def test_collate_masks_padding_and_aligns_loss_mask():
    a = Example([10, 11], [20, 2])
    b = Example([10, 11, 12], [21, 22, 2])
    batch = pad_examples([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 20, 2, 0, 0], [10, 11, 12, 21, 22, 2]]
    assert batch["labels"].tolist() == [
        [IGNORE, IGNORE, 20, 2, IGNORE, IGNORE],
        [IGNORE, IGNORE, IGNORE, 21, 22, 2],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    # loss_mask[t] says whether token t+1 is a response token
    assert batch["loss_mask"].tolist() == [
        [False, True, True, False, False],
        [False, False, True, True, True],
    ]


def test_truncation_cuts_prompt_left_response_right_and_counts():
    stats = TokenStats()
    p, r = fit_lengths(
        list(range(10)), [100, 101, 102, 103, 2], max_length=9, max_prompt_length=6, stats=stats, where="d.jsonl:7"
    )
    assert p == [4, 5, 6, 7, 8, 9]  # oldest prompt tokens dropped
    assert r == [100, 101, 102]  # response cut from the right (no EOS: it did not end here)
    assert stats.prompts_truncated == 1 and stats.responses_truncated == 1
    assert stats.cut_where == ["d.jsonl:7"]  # the log names the record that was cut


def test_sft_loss_equals_hand_cross_entropy_over_response_tokens():
    # two positions are response tokens; the third is prompt (masked)
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, 3.0, 0.0]]])  # (1, 3, V=3)
    targets = torch.tensor([[0, 2, 1]])
    mask = torch.tensor([[True, False, True]])
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    loss, stats = sft_loss(logprobs, mask)

    def ce(row, t):
        z = math.log(sum(math.exp(v) for v in row))
        return z - row[t]

    hand = (ce([2.0, 0.0, -1.0], 0) + ce([1.0, 3.0, 0.0], 1)) / 2
    assert abs(loss.item() - hand) < 1e-6
    ref = torch.nn.functional.cross_entropy(logits[0], torch.tensor([0, -100, 1]), ignore_index=-100)
    assert abs(loss.item() - ref.item()) < 1e-6
    assert stats["tokens"].item() == 2


def test_fully_masked_batch_raises_instead_of_zero_or_nan():
    import pytest

    from alignlab.errors import NumericalError

    with pytest.raises(NumericalError, match="no valid tokens"):
        sft_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))


def test_chat_template_fallback_for_tokenizer_without_one():
    from alignlab.models.load import prepare_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = None
    tok = prepare_tokenizer(tok)
    ids = encode_prompt(tok, (Message("user", "x"),))
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_packing_matches_unpacked_logprobs_and_labels():
    from alignlab.models.logprobs import token_logprobs
    from alignlab.models.presets import build_tiny

    model, tok = build_tiny(seed=1)
    exs, _ = tokenize_sft(
        [rec("a", "bcd"), rec("ef", "g"), rec("hij", "klmno")], tok, max_length=64, max_prompt_length=32
    )
    groups = pack(exs, max_length=64)
    assert [len(g) for g in groups] == [2, 1]
    packed = pack_rows(groups, tok.pad_token_id)
    plain = pad_examples(exs, tok.pad_token_id)
    with torch.no_grad():
        lp_packed = token_logprobs(model, packed["input_ids"], packed["attention_mask"], packed["position_ids"])
        lp_plain = token_logprobs(model, plain["input_ids"], plain["attention_mask"])
    got = lp_packed[packed["loss_mask"]]
    want = lp_plain[plain["loss_mask"]]
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
