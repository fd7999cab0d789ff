"""Linear layers on prepacked weights while sampling on a CPU (oneDNN), for the decoding steps' small-M matmuls.

A decoding step multiplies a few rows (the batch) by every weight matrix. ``F.linear`` hands MKL a
transposed weight each call, and for these shapes MKL reaches a fraction of the machine's matmul
rate (SmolLM2-135M's 49k-row LM head at batch 32: 22 GFLOP/s against 100+ for a large square
product). oneDNN's matmul on a weight reordered once into its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU freezing pass uses) runs the same
product 1.3–2.3× faster at batches 8–64. :func:`packed_linears` packs every ``nn.Linear`` of a
model on entry (about one extra copy of its weights, a fraction of a second for 135M parameters)
and puts the layers back on exit.

The products are the same sums in another order, so logits differ from ``F.linear``'s in the last
bits (about 1e-6 relative); the RNG stream is untouched, so a sampled token changes only where a
draw falls within that rounding of a boundary between two tokens (none did in
``benchmarks/generation.py``'s check). Only float32 on CPU (and a bfloat16 sampling copy at small
batches), without gradients, is packed.
"""

from __future__ import annotations

import contextlib

import torch

# bfloat16 (a cast sampling copy, rollout.precision) gains from packing at a decoding step's rows up
# to 256 (batch 128: 102 vs 108 ms a step on an AMX Xeon) and loses above (batch 512: 307 vs 280 ms)
BF16_MAX_ROWS = 256


def packing_available(model, rows: int = 1) -> bool:
    """True when ``model``'s weights are float32 (or bfloat16, for decoding steps of at most
    :data:`BF16_MAX_ROWS` rows) on a CPU and this torch build has oneDNN's packed linear."""
    try:
        p = next(model.parameters())
    except StopIteration:
        return False
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        p.device.type == "cpu"
        and (p.dtype == torch.float32 or (p.dtype == torch.bfloat16 and rows <= BF16_MAX_ROWS))
        and torch.backends.mkldnn.is_available()
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


def _packed_forward(layer: torch.nn.Linear, packed: torch.Tensor, batch_size: int):
    weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # the packed op has no backward
            raise RuntimeError("packed_linears is for sampling only (no gradients)")
        rows = x.reshape(-1, layer.in_features)  # (B·T, in)
        if rows.shape[0] > batch_size:  # a prefill: MKL's own large-M product is the faster one there
            y = torch.nn.functional.linear(rows, weight, bias)
        else:
            y = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")  # (B·T, out)
        return y.reshape(*x.shape[:-1], layer.out_features)

    return forward


@contextlib.contextmanager
def packed_linears(model, batch_size: int):
    """Within the block every ``nn.Linear`` of ``model`` runs on a oneDNN-packed copy of its current weight.

    ``batch_size`` (the rows of a decoding step) tunes the packed layout; a call with more rows (a
    prefill: batch × prompt length) runs ``F.linear`` on the original weight, which MKL multiplies
    faster at large M (SmolLM2-135M, 32 prompts of ~40 tokens: 1.5 s against 1.9 s packed).
    Pack after any weight swap that should be seen (``folded_adapters``): the copy is taken on
    entry. A no-op where :func:`packing_available` is False.
    """
    if not packing_available(model, batch_size):
        yield
        return
    patched = []
    try:
        with torch.no_grad():
            for m in model.modules():
                if type(m) is torch.nn.Linear:  # exactly nn.Linear: a subclass may change forward
                    packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), batch_size)
                    m.forward = _packed_forward(m, packed, batch_size)
                    patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward  # back to the class's forward
