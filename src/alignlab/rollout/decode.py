"""The decoding loop of the transformers engine: prefill, then one token per step from a KV cache.

``model.generate`` spends much of a CPU decoding step outside the model's matrix products
(SmolLM2-135M, batch 32, an AVX-512 Xeon: 135 ms a step; this loop: 103 ms, of which the packed
products are about 60). Two costs are not the model's:

* **Sampling.** ``torch.multinomial`` draws one exponential variate per vocabulary entry and row
  (1.6 M at batch 32 for a 49k vocabulary: 42 ms). :func:`sample_tokens` inverts the CDF
  instead (:func:`inverse_cdf`): one uniform per row against the cumulative sum of the
  probabilities, in two levels of float64 sums, a draw from the same distribution up to float32's
  resolution of the probabilities themselves, with the token's log-prob from the same softmax
  (batch 128: 2.7 ms a step, where one float64 sum over the whole vocabulary took 21).
* **The KV cache.** ``DynamicCache`` concatenates each step's key and value onto the whole cache,
  copying all of it every step. :class:`ReservedLayer` writes the new column into a buffer reserved
  for the call's ``max_new_tokens`` and hands the attention a view of the filled part: the same
  tensors, no copy.

The loop itself (:func:`decode`) runs the trunk and the output layer directly, the head on each
row's last position only, and stops when every row has produced EOS. It samples the same
distribution as ``generate`` (temperature, then nucleus ``top_p``; ``temperature == 0`` is greedy)
but draws other random numbers, so for a seed its tokens are not ``generate``'s; greedy tokens are.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from alignlab.models.logprobs import trunk_and_head
from alignlab.trainers.host_memory import MMAP_THRESHOLD


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` that grows into reserved room instead of concatenating.

    The first update (the prefill) allocates ``reserve`` more positions than it brings; each later
    update writes its columns in place while room is left and exposes ``keys``/``values`` as views
    of the filled part. Anything that replaces those tensors (``batch_select_indices``, ``crop``)
    just makes the next update reserve afresh, so every ``DynamicLayer`` operation stays valid.
    """

    def __init__(self, reserve: int, **kwargs):
        super().__init__(**kwargs)
        self.reserve = reserve
        self._k = self._v = None  # the reserved buffers (B, H, capacity, D)

    def _owns(self) -> bool:
        return (
            self._k is not None
            and self.keys.data_ptr() == self._k.data_ptr()
            and self.keys.shape[0] == self._k.shape[0]
        )

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        length = self.get_seq_length()
        if not self._owns() or length + new > self._k.shape[-2]:
            b, h, _, d = key_states.shape
            shape = (b, h, length + new + self.reserve, d)
            # zero-filled: one_query_attention may read the whole buffer, unwritten columns masked out
            self._k = key_states.new_zeros(shape)
            self._v = value_states.new_zeros(shape)
            self._k._alignlab_zero_filled = self._v._alignlab_zero_filled = True
            if length:
                self._k[:, :, :length] = self.keys
                self._v[:, :, :length] = self.values
        self._k[:, :, length : length + new] = key_states
        self._v[:, :, length : length + new] = value_states
        self.keys, self.values = self._k[:, :, : length + new], self._v[:, :, : length + new]
        return self.keys, self.values


def cache_argument(trunk) -> str:
    """The keyword a model's forward (and ``generate``) takes a KV cache by: ``cache`` in newer
    transformers, ``past_key_values`` before it."""
    import inspect

    return "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"


def reserved_cache(config, reserve: int, cache: DynamicCache | None = None) -> DynamicCache:
    """``cache`` (a new ``DynamicCache`` when None) with its plain full-attention layers turned into
    :class:`ReservedLayer` s holding ``reserve`` more positions; other layer kinds (sliding windows)
    are left as they are."""
    cache = DynamicCache(config=config) if cache is None else cache
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            reserved = ReservedLayer(reserve)
            if layer.is_initialized:
                reserved.lazy_initialization(layer.keys, layer.values)
                reserved.keys, reserved.values = layer.keys, layer.values
            cache.layers[i] = reserved
    return cache


# a block of rows whose float32 logits fit in this many bytes is sampled at a time on a CPU: under
# the mmap threshold CPU training fixes, so a block's arrays are heap chunks, reused block to block
SAMPLE_BLOCK_BYTES = MMAP_THRESHOLD // 2


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float = 1.0, generator=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` (B, V) and its log-prob under ``softmax(logits / temperature)``.

    Greedy (argmax, log-prob at temperature 1) when ``temperature == 0``. Otherwise a draw from that
    softmax restricted to the smallest set of most likely tokens whose mass reaches ``top_p`` (all
    of them at 1.0), by inverting the CDF (:func:`inverse_cdf`): with ``p = softmax(z)``,
    ``z = logits / temperature``, the token is the first whose float64 cumulative sum of ``p``
    exceeds ``u · Σp``, u uniform in [0, 1), one per row. The log-prob, ``log p[token]``, is of the
    untruncated softmax (the distribution the training pass scores), whatever ``top_p``.

    On a CPU the rows go in blocks of :data:`SAMPLE_BLOCK_BYTES` of float32 logits (10 rows of a
    49k vocabulary): a (512, 49k) float32 copy and softmax are fresh 100 MB arrays each step, which
    the allocator maps anew and the kernel faults in page by page (an AMD EPYC, bfloat16 logits at
    batch 512: 66 ms a step over the head's matmul, about 20 ms in blocks). Each row's numbers are
    the same either way, and the uniforms are drawn for all rows first, so the tokens are too.
    """
    b, v = logits.shape
    u = None
    if temperature != 0:
        u = torch.rand(b, 1, device=logits.device, generator=generator).double()
    rows = b if logits.device.type != "cpu" else max(1, SAMPLE_BLOCK_BYTES // (4 * v))
    if b <= rows:
        return _sample_block(logits, temperature, top_p, u)
    parts = [
        _sample_block(logits[i : i + rows], temperature, top_p, None if u is None else u[i : i + rows])
        for i in range(0, b, rows)
    ]
    return torch.cat([t for t, _ in parts]), torch.cat([lp for _, lp in parts])


def _sample_block(logits, temperature, top_p, u) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_tokens` on rows of ``logits`` with their uniforms ``u`` (None: greedy)."""
    z = logits.float() if temperature in (0, 1) else logits.float() / temperature
    probs = z.softmax(-1)  # one fused pass (max, exp, sum): 5.6 ms at (128, 49k) where exp_ alone took 9.9
    if u is None:
        tokens = logits.argmax(-1)
    else:
        weights, order = probs, None
        if top_p < 1.0:
            weights, order = probs.sort(dim=-1, descending=True)
            before = weights.cumsum(-1) - weights  # mass of the more likely tokens
            total = weights.sum(-1, keepdim=True)
            weights = weights.masked_fill(before >= top_p * total, 0.0)  # the first token always stays
        index = inverse_cdf(weights, u)
        tokens = (index if order is None else order.gather(-1, index)).squeeze(-1)
    logps = probs.gather(-1, tokens[:, None]).log()
    return tokens, logps.squeeze(-1)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Per row of the non-negative ``weights`` (B, V), the first index whose cumulative sum exceeds
    ``u · Σ weights`` (``u`` (B, 1) float64 in [0, 1)): an index with mass > 0. Returns (B, 1).

    In two levels, so no (B, V) float64 array is made (at batch 128 and a 49k vocabulary that copy
    took 12–16 ms a step): the float64 cumulative sum of float32 sums of blocks of ``block``
    entries finds the block, then the float64 cumulative sum within that block finds the index.
    A block's float32 sum is off by float32 rounding (~1e-7 of its mass), the resolution of the
    float32 weights themselves; where a target falls past a block's own float64 sum the block's
    last index with mass is taken.
    """
    b, v = weights.shape
    nb = -(-v // block)
    padded = weights if nb * block == v else torch.nn.functional.pad(weights, (0, nb * block - v))
    blocks = padded.view(b, nb, block)
    block_cdf = blocks.sum(-1).double().cumsum_(-1)  # (B, nb); a float64 sum reads 25x slower here
    target = u * block_cdf[:, -1:]
    which = torch.searchsorted(block_cdf, target, right=True).clamp_(max=nb - 1)  # (B, 1)
    before = torch.where(which > 0, block_cdf.gather(-1, (which - 1).clamp(min=0)), 0.0)
    inside = blocks.gather(1, which[:, :, None].expand(b, 1, block)).squeeze(1)  # (B, block)
    cdf = inside.double().cumsum_(-1)
    j = torch.searchsorted(cdf, target - before, right=True).clamp_(max=block - 1)
    # rounding can put the target past the block's own sum: take its last index with mass then
    last = block - 1 - (inside > 0).flip(-1).int().argmax(-1, keepdim=True)
    j = torch.where(inside.gather(-1, j) > 0, j, last)
    return which * block + j


@torch.no_grad()
def decode(
    model,
    ids: torch.Tensor,
    attn: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos: int,
    pad: int,
    cache: DynamicCache | None = None,
    logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample up to ``max_new_tokens`` after the left-padded prompts ``ids`` / ``attn`` (B, T).

    ``cache``, when given, already holds every prompt column but the last (``shared_prefill``); the
    loop then runs that column first. Returns the new tokens (B, N ≤ max_new_tokens; a row that
    ended keeps ``pad`` after its EOS) and, with ``logprobs``, each token's log-prob under
    ``softmax(logits / temperature)`` (B, N) (temperature 0: at temperature 1).
    """
    trunk, head = trunk_and_head(model)
    b, t = ids.shape
    if max_new_tokens < 1:
        return ids.new_empty((b, 0)), (torch.zeros(b, 0) if logprobs else None)
    cache = reserved_cache(trunk.config, max_new_tokens + 1, cache)
    name = cache_argument(trunk)
    mask = attn.new_ones((b, t + max_new_tokens))
    mask[:, :t] = attn
    positions = (attn.cumsum(-1) - 1).clamp_(min=0)  # left padding: each row counts from its first token
    start = cache.get_seq_length()
    step_ids, step_pos = ids[:, start:], positions[:, start:]
    next_pos = positions[:, -1:] + 1
    tokens, scores = [], []
    alive = torch.ones(b, dtype=torch.bool, device=ids.device)
    for n in range(max_new_tokens):
        width = t + n
        out = trunk(
            input_ids=step_ids, attention_mask=mask[:, :width], position_ids=step_pos, use_cache=True, **{name: cache}
        )
        tok, logp = sample_tokens(head(out.last_hidden_state[:, -1]), temperature, top_p)
        scores.append(logp)
        tok = tok.masked_fill(~alive, pad)
        tokens.append(tok)
        alive &= tok != eos
        if not alive.any():
            break
        step_ids, step_pos = tok[:, None], next_pos
        next_pos = next_pos + 1
    new = torch.stack(tokens, dim=1)
    return new, (torch.stack(scores, dim=1) if logprobs else None)
