"""Sampling in a lower precision than training: the weights cast for one call, one-query attention.

``rollout.sampling_dtype=bfloat16`` makes the transformers engine sample from a bfloat16 copy of the
policy while training stays in the model's own dtype. On a CPU with AMX (Intel Sapphire Rapids and
newer) oneDNN multiplies bfloat16 3–6× faster than float32, and a decoding step streams half the
bytes of weights; on a GPU bfloat16 is what engines such as vLLM sample in anyway.

What changes is the distribution the responses are drawn from: the bfloat16 policy's, not the
trained float32 one's. Every log-prob the losses use (old, reference, current) is still computed by
the training-precision pass over the sampled tokens, so the losses are the same functions of those
tokens; only the sampling distribution is off by bfloat16's rounding of the logits. The RL stages
measure that gap on every rollout (``sampler/kl``: the mean over response tokens of
``log π_bf16(y_t) − log π(y_t)``, an estimate of KL(π_bf16 ‖ π)) so a run shows whether it matters.
No importance correction is applied.

* :func:`cast_weights`: every floating parameter of a model swapped for a ``dtype`` copy for the
  duration of a block and put back after (the originals are never written; buffers such as the
  rotary frequencies stay as they are, transformers computes them in float32).
* :func:`one_query_attention`: a decoding step's attention (one query per row) as two batched
  matrix products over the grouped heads (the softmax accumulating in float32). For bfloat16 on CPU this is 2.3×
  faster than SDPA's flash kernel (SmolLM2-135M, batch 128, ~90 keys: 0.49 vs 1.13 ms a layer).
  Any other call (a prefill, a mask of another form) goes to transformers' SDPA function.
"""

from __future__ import annotations

import contextlib

import torch

SAMPLING_DTYPES: dict[str, torch.dtype | None] = {"model": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
ONE_QUERY = "alignlab_one_query"


def sampling_dtype(name: str) -> torch.dtype | None:
    """The dtype of ``rollout.sampling_dtype=name`` (None: the model's own); ConfigError when unknown."""
    from alignlab.losses.registry import choose

    return choose(SAMPLING_DTYPES, name, "rollout.sampling_dtype")


@contextlib.contextmanager
def cast_weights(model, dtype: torch.dtype | None):
    """Within the block every floating parameter of ``model`` holds a ``dtype`` copy of its value.

    A no-op when ``dtype`` is None or already every parameter's dtype. On exit each parameter gets
    its original tensor back (never modified), so the optimizer, π_ref and exact resume are untouched.
    Costs one ``dtype`` copy of the weights while it lasts.
    """
    if dtype is None:
        yield
        return
    swapped = []
    try:
        with torch.no_grad():
            for p in model.parameters():  # tied weights are one parameter: cast once
                if p.is_floating_point() and p.dtype != dtype:
                    swapped.append((p, p.data))
                    p.data = p.data.to(dtype)
        yield
    finally:
        for p, original in swapped:
            p.data = original


def _one_query_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention of one query per row: ``softmax(q·Kᵀ·scale + mask)·V`` with the query heads grouped
    by the key/value head they share (``H = KV·G``, head ``h`` reads key/value head ``h // G``).

    ``query`` (B, H, 1, D), ``key``/``value`` (B, KV, L, D), ``attention_mask`` None or boolean
    (B, 1, 1, L) (True: attend). Returns ``(B, 1, H, D)`` as transformers' SDPA function does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q_len, d = query.shape
    kv = key.shape[1]
    plain_mask = attention_mask is None or (
        attention_mask.dtype == torch.bool and attention_mask.shape[1:3] == (1, 1) and attention_mask.shape[0] == b
    )
    if q_len != 1 or h % kv or not plain_mask or dropout or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = d**-0.5 if scaling is None else scaling
    length = key.shape[2]
    attend = torch.ones(b, length, dtype=torch.bool, device=key.device) if attention_mask is None else None
    attend = attention_mask.reshape(b, length) if attend is None else attend
    room = _reserved_room(key), _reserved_room(value)
    if room[0] is not None and room[1] is not None and room[0].shape == room[1].shape:
        # a ReservedLayer's cache: attend over its whole zero-filled buffer (contiguous, so the
        # products read it in place) with the columns not yet written masked out
        key, value = room
        attend = torch.cat([attend, attend.new_zeros(b, key.shape[2] - length)], dim=1)
    q = query.reshape(b, kv, h // kv, d) * scale  # (B, KV, G, D); the scale on the few query values
    scores = torch.matmul(q, key.transpose(-1, -2))  # (B, KV, G, L)
    scores.masked_fill_(~attend.reshape(b, 1, 1, -1), float("-inf"))
    # softmax in the scores' dtype: torch accumulates a bfloat16 softmax in float32 (and rounds once),
    # which saves two conversions a layer (batch 512: 2.4 vs 3.6 ms a layer)
    out = torch.matmul(scores.softmax(-1), value)  # (B, KV, G, D)
    return out.reshape(b, 1, h, d), None


def _reserved_room(t: torch.Tensor) -> torch.Tensor | None:
    """The contiguous buffer ``t`` is the leading columns of (a :class:`~alignlab.rollout.decode.ReservedLayer`
    view ``buffer[:, :, :L]`` of a zero-filled buffer), or None. Reading the buffer saves the copy a
    batched product of the strided view makes in bfloat16 (0.64 vs 0.13 ms at batch 128, 90 keys)."""
    base = t._base
    if (
        base is None
        or not getattr(base, "_alignlab_zero_filled", False)
        or not base.is_contiguous()
        or base.shape[:2] != t.shape[:2]
        or base.shape[3:] != t.shape[3:]
        or base.data_ptr() != t.data_ptr()
    ):
        return None
    return base


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if ONE_QUERY not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(ONE_QUERY, _one_query_attention)
        AttentionMaskInterface.register(ONE_QUERY, sdpa_mask)  # the same boolean masks SDPA gets


@contextlib.contextmanager
def one_query_attention(model):
    """Within the block a model that runs SDPA attention runs :func:`_one_query_attention` instead
    (the decoding steps; a prefill still goes to SDPA). A no-op for any other attention implementation."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register()
    config._attn_implementation = ONE_QUERY
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
