"""How many rows a batch of block-diagonal segments should take: the layout that costs least.

A shared-prompt pair ``[prompt | chosen | rejected]`` already sits behind its own 4-D mask, so
several can share a row at no cost in exactness. One pair per row pads every row to the longest
pair (on the demo and HH-RLHF pairs a quarter of the columns can be padding); one row for the
whole batch pads nothing but makes attention, which runs over every column of a row whatever
the mask, quadratic in the batch. Between the two, for ``R`` rows of width ``T`` the work of a
step is about

    cost(R) = R·T·(1 + T / c)

per layer: ``R·T`` token-columns through the linear layers (2·P FLOPs each, P the layer's weights)
and ``R·T²`` query-key pairs through attention (4·h_q FLOPs each, h_q = heads × head dim), so
``c = P / (2·h_q)`` in FLOPs, divided by 1.5 because CPU attention kernels run at about two thirds
of the matmul rate (measured on SmolLM2-135M: ``c`` ≈ 2,000 columns). For each ``R`` the segments
are spread longest first onto the least-filled row; the ``R`` of least cost wins. Every layout gives
the same numbers: only padding and attention work change.
"""

from __future__ import annotations

import heapq

ATTENTION_SLOWDOWN = 1.5  # CPU attention FLOPs cost this many matmul FLOPs (SDPA fwd+bwd vs mm, SmolLM2)
DEFAULT_ATTENTION_WIDTH = 2048.0  # c for SmolLM2-135M; used when a config does not say enough


def attention_width(config) -> float:
    """``c`` of the cost model for a transformers decoder config (Llama-like fields)."""
    try:
        h = config.hidden_size
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        inter = config.intermediate_size
    except (AttributeError, TypeError, ZeroDivisionError):
        return DEFAULT_ATTENTION_WIDTH
    hq, hkv = heads * head_dim, kv * head_dim
    per_layer = h * (hq + 2 * hkv) + hq * h + 3 * h * inter  # q, k, v, o and a gated MLP
    return per_layer / (2.0 * hq) / ATTENTION_SLOWDOWN


def spread(lengths: list[int], rows: int) -> list[list[int]]:
    """Indices of ``lengths`` on ``rows`` rows, longest first onto the least-filled row."""
    heap = [(0, r) for r in range(rows)]
    bins: list[list[int]] = [[] for _ in range(rows)]
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        used, r = heapq.heappop(heap)
        bins[r].append(i)
        heapq.heappush(heap, (used + lengths[i], r))
    return [b for b in bins if b]


def cheapest_rows(lengths: list[int], width: float) -> list[list[int]]:
    """The rows of least ``R·T·(1 + T/width)`` over every row count 1..len(lengths)."""
    best, best_cost = [[i] for i in range(len(lengths))], float("inf")
    for rows in range(1, len(lengths) + 1):
        bins = spread(lengths, rows)
        T = max(sum(lengths[i] for i in b) for b in bins)
        cost = len(bins) * T * (1.0 + T / width)
        if cost < best_cost:
            best, best_cost = bins, cost
    return best
