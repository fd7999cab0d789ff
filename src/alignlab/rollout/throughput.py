"""Generation speed against the machine's compute limit (issue #15).

The compute limit is the tokens/s a device would reach if every sampled token cost exactly its
model FLOPs and the device ran them at its dense fp32 matmul rate::

    limit (tokens/s) = matmul FLOP/s / (2·N)

N follows :mod:`alignlab.models.flops`: the parameters less the input embedding, the output head
counted (tied or not), LoRA adapter weights left out (sampling runs with them folded into the base
weights, :func:`alignlab.rollout.generate.folded_adapters`). Attention over the KV cache is not
counted, as in a model-FLOPs-utilisation figure, so the fraction is a lower bound on how busy the
device was. The matmul rate is measured once per process and device with a large ``torch.mm``.
"""

from __future__ import annotations

import functools
import time

import torch


def sampling_parameters(model) -> int:
    """N of the module docstring: non-embedding parameters plus the head, LoRA weights excluded."""
    from alignlab.models.flops import non_embedding_parameters
    from alignlab.models.logprobs import unwrap

    base = unwrap(model)
    lora = sum(p.numel() for name, p in base.named_parameters() if "lora_" in name)
    return non_embedding_parameters(base) - lora


def flops_per_token(model) -> float:
    """Forward FLOPs of one sampled token: 2·N."""
    return 2.0 * sampling_parameters(model)


@functools.cache
def matmul_gflops(device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """The device's fp32 ``torch.mm`` rate in GFLOP/s: the best of ``repeats`` (size × size)² products.

    The best, not the mean, so that a moment of other load on a shared machine does not lower the
    limit. About 1 s on a 2-core CPU; cached per (device, size, repeats). Leaves the global RNG as
    it was (a run that resumes measures it at another step than the straight run).
    """
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)  # its own stream: the training RNG must not move
    a = torch.randn(size, size, device=dev, generator=g)
    b = torch.randn(size, size, device=dev, generator=g)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    torch.mm(a, b)  # warm-up: thread pool and library set-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size**3 / best / 1e9


def compute_limit_tokens_per_s(model, gflops: float | None = None) -> float:
    """Tokens/s at the device's matmul rate (``gflops``; measured when None) for ``model``."""
    if gflops is None:
        gflops = matmul_gflops(str(next(model.parameters()).device))
    return gflops * 1e9 / flops_per_token(model)


def compute_limit_fraction(tokens_per_s: float, model, gflops: float | None = None) -> float:
    """``tokens_per_s`` as a fraction of :func:`compute_limit_tokens_per_s` (1.0: at the limit)."""
    return tokens_per_s / compute_limit_tokens_per_s(model, gflops)
