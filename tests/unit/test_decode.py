"""The decoding loop (rollout.decode): inverse-CDF sampling draws the softmax's distribution (and only
the nucleus with top_p), the reserved KV cache grows in place and equals concatenation, and greedy
decoding gives ``model.generate``'s tokens with left padding."""

import math

import pytest
import torch
from transformers import DynamicCache

from alignlab.models.presets import build_tiny
from alignlab.rollout.decode import ReservedLayer, decode, inverse_cdf, reserved_cache, sample_tokens


def test_one_draw_by_hand():
    """p = (0.1, 0.2, 0.3, 0.4): the CDF is (0.1, 0.3, 0.6, 1.0); the token is the first entry above u."""
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log().repeat(6, 1)
    u = torch.rand(6, 1, generator=torch.Generator().manual_seed(5))
    want = [sum(float(x) >= c for c in (0.1, 0.3, 0.6)) for x in u.flatten()]
    got, logps = sample_tokens(logits, 1.0, generator=torch.Generator().manual_seed(5))
    assert got.tolist() == want
    assert logps.tolist() == pytest.approx([math.log((0.1, 0.2, 0.3, 0.4)[i]) for i in want], abs=1e-6)


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_sampling_in_blocks_of_rows_gives_the_tokens_of_one_block(monkeypatch, temperature, top_p):
    """A CPU samples SAMPLE_BLOCK_BYTES of logits at a time: 37 rows in blocks of 5 (the last of 2)
    give the very tokens and log-probs of all 37 at once for the same seed."""
    import alignlab.rollout.decode as decode_module

    logits = torch.randn(37, 1000, generator=torch.Generator().manual_seed(3)) * 3
    whole = sample_tokens(logits, temperature, top_p, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(decode_module, "SAMPLE_BLOCK_BYTES", 4 * 1000 * 5)
    blocks = sample_tokens(logits, temperature, top_p, generator=torch.Generator().manual_seed(9))
    assert torch.equal(whole[0], blocks[0]) and torch.equal(whole[1], blocks[1])
    assert len(set(whole[0].tolist())) > 5  # the rows really drew different tokens


def test_draws_follow_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -float("inf")])
    for temperature in (1.0, 0.5):
        p = torch.softmax(logits / temperature, -1)
        n = 40_000
        draws, logps = sample_tokens(logits.repeat(n, 1), temperature, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(logps, p.log()[draws])
        freq = torch.bincount(draws, minlength=5).double() / n
        assert freq[4] == 0  # a token of probability 0 is never drawn
        # each frequency within 5 standard errors of its probability
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all(), (freq, p)


def test_top_p_keeps_the_smallest_set_reaching_p():
    """p = (0.5, 0.3, 0.15, 0.05) shuffled: top_p 0.7 keeps the 0.5 and 0.3 tokens (0.5 < 0.7 ≤ 0.8)."""
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    n = 20_000
    draws, logps = sample_tokens(probs.log().repeat(n, 1), 1.0, top_p=0.7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(logps, probs.log()[draws])  # of the untruncated softmax
    freq = torch.bincount(draws, minlength=4).double() / n
    assert freq[0] == 0 and freq[2] == 0
    assert freq[1] == pytest.approx(0.5 / 0.8, abs=0.02) and freq[3] == pytest.approx(0.3 / 0.8, abs=0.02)
    one, _ = sample_tokens(probs.log().repeat(50, 1), 1.0, top_p=0.3)  # below the top token's mass: only it
    assert (one == 1).all()


def test_greedy_is_argmax():
    logits = torch.randn(7, 11, generator=torch.Generator().manual_seed(2))
    tokens, logps = sample_tokens(logits, 0.0)
    assert torch.equal(tokens, logits.argmax(-1))
    torch.testing.assert_close(logps, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))


def test_reserved_layer_writes_in_place_and_equals_concatenation():
    g = torch.Generator().manual_seed(3)
    steps = [torch.randn(2, 3, t, 4, generator=g) for t in (5, 1, 1, 1)]
    layer = ReservedLayer(reserve=2)
    ref = None
    ptrs = []
    for kv in steps:
        keys, values = layer.update(kv, -kv)
        ref = kv if ref is None else torch.cat([ref, kv], dim=-2)
        assert torch.equal(keys, ref) and torch.equal(values, -ref)
        ptrs.append(keys.data_ptr())
    assert ptrs[0] == ptrs[1] == ptrs[2]  # the reserved room: no copy
    assert ptrs[3] != ptrs[2]  # room exhausted (5 + 2): it reserves afresh, contents kept
    layer.batch_select_indices(torch.tensor([1, 1]))  # replaced tensors: the next update starts a buffer
    keys, _ = layer.update(steps[1], steps[1])
    assert torch.equal(keys, torch.cat([ref[[1, 1]], steps[1]], dim=-2))


def test_reserved_cache_takes_over_a_filled_cache():
    model, _ = build_tiny(seed=0)
    ids = torch.randint(3, 250, (2, 6))
    cache = DynamicCache(config=model.config)
    model.model(input_ids=ids, use_cache=True, cache=cache)
    before = [layer.keys.clone() for layer in cache.layers]
    reserved = reserved_cache(model.config, 4, cache)
    assert all(isinstance(layer, ReservedLayer) for layer in reserved.layers)
    assert reserved.get_seq_length() == 6 and torch.equal(reserved.layers[0].keys, before[0])


@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_decoding_equals_generate_with_left_padding(with_eos):
    model, tok = build_tiny(seed=0)
    model.eval()
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=12, do_sample=False, pad_token_id=0)
    want = want[:, width:]
    eos = int(want[0, 3]) if with_eos else -1  # a token row 0 produces: that row then stops there
    got, logps = decode(model, ids, attn, max_new_tokens=12, temperature=0.0, top_p=1.0, eos=eos, pad=0, logprobs=True)
    if not with_eos:
        assert torch.equal(got, want)
    else:
        first = int((want[0] == eos).nonzero()[0])
        assert got[0, : first + 1].tolist() == want[0, : first + 1].tolist()
        assert (got[0, first + 1 :] == 0).all()  # padded after its EOS
    assert logps.shape == got.shape and (logps <= 0).all() and math.isfinite(float(logps.sum()))


def test_stops_once_every_row_has_ended():
    model, _ = build_tiny(seed=0)
    model.eval()
    ids, attn = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long)
    first, _ = decode(model, ids, attn, max_new_tokens=1, temperature=0.0, top_p=1.0, eos=-1, pad=0)
    calls = []
    handle = model.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        out, _ = decode(model, ids, attn, max_new_tokens=20, temperature=0.0, top_p=1.0, eos=int(first[0, 0]), pad=0)
    finally:
        handle.remove()
    assert out.tolist() == first.tolist() and len(calls) == 1
    none, logps = decode(model, ids, attn, max_new_tokens=0, temperature=1.0, top_p=1.0, eos=2, pad=0, logprobs=True)
    assert none.shape == (1, 0) and logps.shape == (1, 0)


def test_inverse_cdf_equals_one_cumulative_sum():
    gen = torch.Generator().manual_seed(0)
    for v in (5, 1000, 1024, 3000):
        w = torch.rand(40, v, generator=gen) ** 8
        w[:, ::3] = 0  # zero-mass entries are never drawn
        u = torch.rand(40, 1, generator=gen).double()
        cdf = w.double().cumsum(-1)
        want = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
        got = inverse_cdf(w, u, block=64)
        assert torch.equal(got, want), v
        assert (w.gather(-1, got) > 0).all()
