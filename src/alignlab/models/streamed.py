"""A frozen model whose weights live in a file and are read one module at a time: π_ref off the heap.

Full fine-tuning keeps a frozen copy of the initial weights as π_ref (SmolLM2-135M in float32:
513 MiB). It runs only in no-grad passes, one module after another, so it needs only the weights
of the module running now. :func:`stream_weights` writes every parameter of a frozen copy to an
unnamed temporary file once, frees them, and hooks each module so that its own parameters are read
back (plain reads into fresh tensors, so the process maps none of the file) just before its
forward and freed just after it. Buffers (e.g. rotary frequencies) stay in memory.

The bytes are the copy's own, so the outputs are bitwise those of the in-memory copy. What it
costs is one read of the weights per forward pass, served by the OS's page cache while memory
allows (measured on SmolLM2 in :mod:`benchmarks`); what it saves is the weights' memory minus the
largest module's (the 113 MiB embedding / LM head of SmolLM2).

A caller that uses a module's weights without calling the module (alignlab's LM-head log-probs
read ``head.weight``) holds them with :meth:`StreamedWeights.holding`.
"""

from __future__ import annotations

import contextlib
import tempfile

import torch


class StreamedWeights:
    """The file and the hooks behind one streamed model (``model.streamed_weights``)."""

    def __init__(self, model: torch.nn.Module, directory: str | None = None):
        self.file = tempfile.TemporaryFile(dir=directory)  # unnamed: gone when closed or at exit
        self.where: dict[int, tuple[int, torch.Size, torch.dtype]] = {}  # id(param) -> (offset, shape, dtype)
        self.depth: dict[int, int] = {}  # id(param) -> how many holders have it loaded now
        with torch.no_grad():
            for p in model.parameters():  # unique parameters (tied weights once)
                t = p.detach().contiguous().cpu()
                self.where[id(p)] = (self.file.tell(), t.shape, t.dtype)
                self.file.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
                p.data = torch.empty(0, dtype=t.dtype, device=p.device)
        self.file.flush()
        self.handles = []
        for module in model.modules():
            if any(True for _ in module.parameters(recurse=False)):
                self.handles.append(module.register_forward_pre_hook(lambda m, args: self._load(m)))
                self.handles.append(module.register_forward_hook(lambda m, args, out: self._free(m)))

    def _read(self, p: torch.nn.Parameter) -> torch.Tensor:
        offset, shape, dtype = self.where[id(p)]
        t = torch.empty(shape, dtype=dtype)
        if t.numel():
            self.file.seek(offset)
            self.file.readinto(t.view(-1).view(torch.uint8).numpy())
        return t.to(p.device)

    def _load(self, module) -> None:
        for p in module.parameters(recurse=False):
            if self.depth.get(id(p), 0) == 0:
                p.data = self._read(p)
            self.depth[id(p)] = self.depth.get(id(p), 0) + 1

    def _free(self, module) -> None:
        for p in module.parameters(recurse=False):
            self.depth[id(p)] -= 1
            if self.depth[id(p)] == 0:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    @contextlib.contextmanager
    def holding(self, module):
        """``module``'s own parameters loaded for the block (for code that reads them without calling it)."""
        self._load(module)
        try:
            yield module
        finally:
            self._free(module)


def stream_weights(model: torch.nn.Module, directory: str | None = None) -> torch.nn.Module:
    """Move ``model``'s parameters (a frozen, no-grad model) to a temporary file in ``directory``
    (default: the system's), read back module by module as it runs. Returns ``model``."""
    if any(p.requires_grad for p in model.parameters()):
        raise ValueError("stream_weights is for frozen models (every parameter requires_grad=False)")
    model.streamed_weights = StreamedWeights(model, directory)
    return model


def holding(model, module):
    """:meth:`StreamedWeights.holding` when ``model`` is streamed, else a no-op."""
    streamed = getattr(model, "streamed_weights", None)
    return streamed.holding(module) if streamed is not None else contextlib.nullcontext(module)
