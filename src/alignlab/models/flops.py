"""Tokens processed and estimated FLOPs, counted where every model runs: its decoder stack.

:func:`track` puts a forward pre-hook on a loaded model's trunk (the decoder stack under the LM or
classification head). Each call adds its token positions to a process-wide :data:`COUNTS`:
``forward_tokens`` for passes without gradient (generation steps, reference and old log-probs,
scoring, eval) and ``trained_tokens`` for passes with gradient. The FLOPs estimate is the usual
dense-transformer count with N the model's parameters less its input embedding (Kaplan et al.
2020, arXiv:2001.08361)::

    forward        2·N per token
    with gradient  2·N + 2·N (activation gradients) + 2·N·f (weight gradients; f = the share of
                   N that trains: 1 for full fine-tuning, ≈ 0 with LoRA)

Attention over the context (2·n_layer·T·d per token) and recomputation under activation
checkpointing are left out, as in a model-FLOPs-utilisation count. A token position is a real token
when the call has a 2-D attention mask (of a decoding step with a KV cache: the mask's last columns,
the new tokens), else every position of the batch (packed rows: their padding too). A stage's cost (``trainers.run.stage_cost``) is the change of these counts while it ran.
"""

from __future__ import annotations

import torch

COUNTS = {"forward_tokens": 0, "trained_tokens": 0, "flops": 0.0}


def non_embedding_parameters(model) -> int:
    """Parameters of ``model`` minus its input embedding (the output head, even when tied, counts)."""
    total = sum(p.numel() for p in model.parameters())
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        out = getattr(model, "get_output_embeddings", lambda: None)()
        tied = out is not None and getattr(out, "weight", None) is emb.weight
        if not tied:  # a tied head shares the tensor: its multiply still happens every token
            total -= emb.weight.numel()
    return total


def _positions(args, kwargs) -> int:
    ids = kwargs.get("input_ids", args[0] if args else None)
    shaped = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
    if not isinstance(shaped, torch.Tensor):
        return 0
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        # a decoding step with a KV cache passes the whole context's mask: its last columns are the new tokens
        return int(mask[:, -shaped.shape[1] :].sum())
    return int(shaped.shape[0] * shaped.shape[1])


def track(model) -> None:
    """Count ``model``'s token positions and FLOPs into :data:`COUNTS` (idempotent)."""
    from alignlab.models.logprobs import unwrap

    base = unwrap(model)
    trunk = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if not isinstance(trunk, torch.nn.Module) or getattr(trunk, "_alignlab_flops", False):
        return
    n = non_embedding_parameters(base)
    params = list(base.parameters())

    def hook(module, args, kwargs):
        tokens = _positions(args, kwargs)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            trainable = sum(p.numel() for p in params if p.requires_grad) / max(n, 1)
            COUNTS["trained_tokens"] += tokens
            COUNTS["flops"] += tokens * (4 * n + 2 * n * min(trainable, 1.0))
        else:
            COUNTS["forward_tokens"] += tokens
            COUNTS["flops"] += tokens * 2 * n

    trunk.register_forward_pre_hook(hook, with_kwargs=True)
    trunk._alignlab_flops = True


def snapshot() -> dict:
    return dict(COUNTS)


def since(start: dict) -> dict:
    """The counts added since ``start`` (a :func:`snapshot`): tokens as ints, FLOPs as a float."""
    return {k: COUNTS[k] - start.get(k, 0) for k in COUNTS}
