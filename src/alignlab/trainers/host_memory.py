"""Peak host memory of CPU training: what glibc's heap keeps, and AdamW's moments in one block.

A training step on the CPU allocates and frees thousands of activations whose sizes change with
every batch (rows of different widths). glibc's allocator serves tensors under its mmap threshold
(which grows on its own up to 32 MiB) from its heap and keeps freed chunks there, resident; the
holes left between long-lived and short-lived blocks are reused only by what fits. Measured on the
``alignlab dpo`` command (SmolLM2-135M, full fine-tuning, 32 HH-RLHF pairs; ``benchmarks/README.md``):
the largest live heap of a step was about 1.96 GB while the process's resident heap reached 2.4 GB.

Three measures, each harmless to results (no number a step computes changes):

* :func:`place_adam_moments`: AdamW's ``exp_avg`` and ``exp_avg_sq`` (twice the trained weights, the
  longest-lived tensors of a run) as views of one contiguous block, allocated before the first
  step, instead of 2 × (number of weights) heap blocks created inside the first step among the
  activations. One block that size is mapped on its own, outside the heap.
* :func:`fix_mmap_threshold`: tensors of at least 4 MiB (the MLP's products for a wide row, the
  head's logits) get their own mapping, returned to the system when freed, instead of a heap chunk.
  The threshold is fixed, so glibc no longer raises it after the first large free.
* :func:`release_free_heap`: after each optimizer step (activations and gradients freed) the free
  pages inside the heap go back to the system (``malloc_trim``), so the next step's RSS holds what
  it touches, not the union of every earlier step's holes.

Fixing the mmap threshold also fixes glibc's trim threshold (at its default, 128 KiB): any free
memory past that at the heap's top goes back to the system at once. Between optimizer steps that is
what we want; inside a sampling call it is not, since every decoding step frees and reallocates
the same few MiB of activations, and each time the kernel faults the pages in again (SmolLM2, 512
bfloat16 rows on an AMD EPYC: a step's head and sampling 164 ms with it, 103 ms without).
:func:`heap_kept` lifts it for the length of a block and trims once at its end.

On another C library (musl, macOS) the two glibc calls do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools

import torch

MMAP_THRESHOLD = 4 << 20  # bytes: measured on the DPO command, 1/2/4/16 MiB (benchmarks/README.md)
TRIM_THRESHOLD = 128 << 10  # glibc's default, set with the fixed mmap threshold so that it is known
KEPT_HEAP = 64 << 20  # the trim threshold inside heap_kept
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_fixed = False  # fix_mmap_threshold has run in this process


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if lib is None or not hasattr(lib, "malloc_trim") or not hasattr(lib, "mallopt"):
        return None  # not glibc
    return lib


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of at least ``nbytes`` by their own mapping from now on (process-wide), and
    trim the heap's top past :data:`TRIM_THRESHOLD`."""
    global _fixed
    lib = _libc()
    ok = lib is not None and lib.mallopt(_M_MMAP_THRESHOLD, int(nbytes)) == 1
    if ok and lib.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
        _fixed = True
    return bool(ok)


@contextlib.contextmanager
def heap_kept(nbytes: int = KEPT_HEAP):
    """Within the block free memory at the heap's top stays mapped while it is under ``nbytes``
    (past that glibc trims the whole top, as it does past 128 KiB outside); on exit the trim
    threshold is :data:`TRIM_THRESHOLD` again and the free pages go back (``malloc_trim``).

    A no-op unless :func:`fix_mmap_threshold` ran in this process: otherwise glibc still adjusts
    both thresholds itself, and setting one would stop that.
    """
    lib = _libc()
    if lib is None or not _fixed:
        yield
        return
    lib.mallopt(_M_TRIM_THRESHOLD, int(nbytes))
    try:
        yield
    finally:
        lib.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        release_free_heap()


def release_free_heap() -> bool:
    """Give the heap's free pages back to the system (their contents are garbage); True if any were."""
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(0) == 1)


def on_host(params) -> bool:
    """Whether every parameter is a plain CPU tensor (not a DTensor shard, not on an accelerator)."""
    params = list(params)
    return bool(params) and all(type(p.data) is torch.Tensor and p.device.type == "cpu" for p in params)


def place_adam_moments(optimizer: torch.optim.Optimizer) -> bool:
    """Put AdamW's two moments of every parameter into one contiguous block (per dtype).

    Moments already there (a resumed run) are copied in; parameters without state get what AdamW
    would create on its first step (zeros, step 0). Returns False, leaving the optimizer as it is,
    unless it is a plain AdamW (no amsgrad) over CPU tensors.
    """
    if type(optimizer) is not torch.optim.AdamW or any(g.get("amsgrad") for g in optimizer.param_groups):
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not on_host(params):
        return False
    by_dtype: dict[torch.dtype, list] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for dtype, ps in by_dtype.items():
        block = torch.zeros(2, sum(p.numel() for p in ps), dtype=dtype)
        at = 0
        for p in ps:
            n, old = p.numel(), optimizer.state.get(p, {})
            # the step counter as AdamW's first step makes it on the CPU (fused or not): a float32 scalar
            new = {"step": old["step"] if "step" in old else torch.zeros((), dtype=torch.float32)}
            for i, key in enumerate(("exp_avg", "exp_avg_sq")):
                view = block[i, at : at + n].view_as(p)
                if key in old:
                    view.copy_(old[key])
                new[key] = view
            optimizer.state[p] = new
            at += n
    return True
