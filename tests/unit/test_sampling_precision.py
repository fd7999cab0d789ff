"""Sampling in bfloat16 (rollout.precision): the cast copy lives only inside the call and leaves the
float32 weights untouched, the one-query attention equals SDPA (also over a reserved cache's whole
buffer), the engine really decodes in bfloat16 and its log-probs stay within bfloat16 rounding of the
float32 policy's, and the sampler's KL to the trained policy is the documented mean."""

import pytest
import torch
import torch.nn.functional as F

from alignlab.errors import ConfigError
from alignlab.models.presets import build_tiny
from alignlab.rollout.decode import ReservedLayer
from alignlab.rollout.generate import SamplingParams, TransformersEngine
from alignlab.rollout.precision import _one_query_attention, cast_weights, one_query_attention, sampling_dtype


def test_cast_weights_swaps_for_the_block_and_puts_the_originals_back():
    model, _ = build_tiny(seed=0, tie_word_embeddings=True)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    with cast_weights(model, torch.bfloat16):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied: cast once
        assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers stay
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.data_ptr() == before[n][0]
        assert torch.equal(p.detach(), before[n][1])
    with cast_weights(model, None):  # a no-op
        assert next(model.parameters()).dtype == torch.float32


def _gqa_reference(query, key, value, mask):
    groups = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask)
    return out.transpose(1, 2)


def test_one_query_attention_equals_sdpa_with_padding_and_a_reserved_buffer():
    gen = torch.Generator().manual_seed(0)
    b, h, kv, length, d = 5, 6, 2, 7, 8
    query = torch.randn(b, h, 1, d, generator=gen)
    key, value = torch.randn(b, kv, length, d, generator=gen), torch.randn(b, kv, length, d, generator=gen)
    mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding
    mask[3, ..., :1] = False
    want = _gqa_reference(query, key, value, mask)
    for m in (mask, None):
        got, _ = _one_query_attention(None, query, key, value, m)
        ref = want if m is not None else _gqa_reference(query, key, value, None)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    # the same keys as the filled part of a ReservedLayer: the whole zero-filled buffer is read
    layer = ReservedLayer(reserve=4)
    layer.update(key[:, :, :-1], value[:, :, :-1])
    k_view, v_view = layer.update(key[:, :, -1:], value[:, :, -1:])
    assert k_view._base is not None and k_view._base.shape[2] > length
    got, _ = _one_query_attention(None, query, k_view, v_view, mask)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # a prefill (several queries) goes to transformers' SDPA function
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = h // kv, True
    q3 = torch.randn(b, h, 3, d, generator=gen)
    got, _ = _one_query_attention(module, q3, key, value, None, scaling=d**-0.5)
    ref = F.scaled_dot_product_attention(
        q3, key.repeat_interleave(h // kv, 1), value.repeat_interleave(h // kv, 1), is_causal=False
    )
    assert got.shape == (b, 3, h, d)
    assert not torch.allclose(got, ref.transpose(1, 2))  # causal: the last key is hidden from query 0


def test_bfloat16_engine_decodes_in_bfloat16_and_stays_near_the_float32_policy():
    model, tok = build_tiny(seed=1, num_key_value_heads=2)
    seen = []
    hook = model.model.layers[0].register_forward_hook(lambda m, a, o: seen.append(a[0].dtype))
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, logprobs=True)
    with one_query_attention(model.model):
        assert model.config._attn_implementation == "alignlab_one_query"
    assert model.config._attn_implementation == "sdpa"
    gens = TransformersEngine(model, tok, batch_size=3, dtype=torch.bfloat16).generate(prompts, params)
    hook.remove()
    assert set(seen) == {torch.bfloat16}
    assert model.config._attn_implementation == "sdpa" and next(model.parameters()).dtype == torch.float32
    # the float32 policy's log-probs of the same tokens: within bfloat16's rounding of the logits
    for g in gens:
        ids = torch.tensor([g.prompt_ids + g.response_ids])
        with torch.no_grad():
            logp = model(ids).logits[0, len(g.prompt_ids) - 1 : -1].float().log_softmax(-1)
        exact = logp.gather(-1, torch.tensor(g.response_ids)[:, None]).squeeze(-1)
        diff = (torch.tensor(g.logprobs) - exact).abs().max()
        assert 0 < diff < 0.1, diff  # not float32's own values, and close to them


def test_sampling_dtype_names():
    assert sampling_dtype("model") is None and sampling_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ConfigError, match="rollout.sampling_dtype.*bfloat16"):
        sampling_dtype("bf16")


def test_sampler_kl_by_hand():
    from alignlab.trainers.rl import sampler_kl

    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # (−0.7 + 1) + (−2.2 + 2) + (−0.4 + 0.5) over the 3 valid tokens; the padded one is not counted
    assert sampler_kl([[-0.7, -2.2], [-0.4]], logprobs, mask) == pytest.approx((0.3 - 0.2 + 0.1) / 3, abs=1e-6)
