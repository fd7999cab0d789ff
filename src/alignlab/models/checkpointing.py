"""Activation checkpointing of the decoder layers: none, selective or full.

In training, autograd keeps every intermediate tensor a layer's backward will read. For a
Llama-style layer in float32 that is about 12,700 numbers per token (SmolLM2-135M: 1.4 GB for
one DPO batch of 935 tokens), and most of it comes from cheap element-wise work: the RMSNorm
products, RoPE, the repeated key/value heads, SiLU and the gate·up product (four 1536-wide tensors
per token in the MLP alone).

* ``full``: keep only each layer's input; the whole layer runs again in backward (about a third
  more compute). Hugging Face's ``gradient_checkpointing_enable``.
* ``selective``: the same checkpoint per layer, with a policy (PyTorch's selective activation
  checkpointing) that keeps the outputs of the matrix products and of attention and recomputes
  everything else. No matmul runs twice; per token and layer about half the numbers are kept.
  One matmul output is not kept: the MLP's down projection (the product whose inner dimension is
  the config's ``intermediate_size``). The layer's backward never reads it (its own backward
  reads its input, the residual add reads nothing), and the layer's output is the next layer's
  saved input, so a recomputation stops before it (``torch.utils.checkpoint``'s early stop): a
  tenth of the kept numbers for nothing. Under LoRA the adapters' products run after the base
  one in each module, so the base product would be recomputed: there every output is kept.
* ``none``: keep everything (fastest when memory is plentiful).

The results are the same in all three modes (the recomputed ops are deterministic; dropout's RNG
state is replayed by ``torch.utils.checkpoint``).
"""

from __future__ import annotations

import functools
import logging

MODES = ("none", "selective", "full")


def resolve_mode(model_cfg) -> str:
    """The mode a :class:`~alignlab.config.ModelConfig` asks for, ``auto`` decided.

    ``auto``: ``selective`` for full fine-tuning, ``none`` with LoRA. Measured on SmolLM2-135M
    (CPU, float32): with all weights trained the backward computes weight gradients too, so the
    recomputed element-wise work is about 7% of a DPO step, and it saves 0.74 GB of the 4 GB peak;
    with LoRA the backward is light, the same recomputation costs about 15% of an SFT step, and the
    peak without it is already small (no gradients or AdamW moments for the base weights).
    """
    mode = model_cfg.gradient_checkpointing
    if mode == "auto":
        return "none" if model_cfg.lora.enabled else "selective"
    return mode


@functools.cache
def _kept_ops() -> frozenset:
    """The aten ops whose outputs selective checkpointing keeps: matrix products and attention kernels."""
    import torch

    aten = torch.ops.aten
    names = (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


def _policy(ctx, op, *args, unkept_inner: int | None = None, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    if op not in _kept_ops():
        return CheckpointPolicy.PREFER_RECOMPUTE
    if unkept_inner is not None and op in _products():
        mat2 = args[2] if op is _products()[1] else args[1]  # mm(x, wᵀ) or addmm(b, x, wᵀ)
        if mat2.dim() == 2 and mat2.shape[0] == unkept_inner:
            return CheckpointPolicy.PREFER_RECOMPUTE  # the down projection: never read in backward
    return CheckpointPolicy.MUST_SAVE


@functools.cache
def _products() -> tuple:
    import torch

    return torch.ops.aten.mm.default, torch.ops.aten.addmm.default


def checkpoint_kwargs(mode: str, *, unkept_inner: int | None = None) -> dict:
    """Keyword arguments for ``torch.utils.checkpoint.checkpoint`` that implement ``mode``.

    ``unkept_inner``: under ``selective``, a linear layer's product with this many input features
    is not kept (the MLP's down projection; see the module's docstring).
    """
    if mode not in ("selective", "full"):
        raise ValueError(f"no checkpointing arguments for mode {mode!r}")
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        policy = functools.partial(_policy, unkept_inner=unkept_inner)
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, policy)
    return kwargs


def enable_checkpointing(model, mode: str, *, adapters: bool = False) -> bool:
    """Checkpoint each decoder layer of a transformers model in ``mode``; False when nothing was done.

    ``none`` does nothing; so does a model class that transformers cannot checkpoint (a warning
    says so: checkpointing saves memory, it never changes results, so training goes on without it).
    ``adapters``: LoRA will wrap the linear layers (every product's output is then kept).
    """
    if mode not in MODES:
        raise ValueError(f"checkpointing mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "none":
        return False
    if not getattr(model, "supports_gradient_checkpointing", False):
        logging.getLogger("alignlab").warning(
            "%s does not support activation checkpointing: training without it (more memory)", type(model).__name__
        )
        return False
    # model.config.use_cache stays as it is: the saved config must not turn the KV cache off for
    # inference; training forwards pass use_cache=False and generation runs in eval mode (no checkpoints)
    inner = None if adapters else getattr(model.config, "intermediate_size", None)
    kwargs = checkpoint_kwargs(mode, unkept_inner=inner if isinstance(inner, int) else None)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True
