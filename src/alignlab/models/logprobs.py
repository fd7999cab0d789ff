"""Per-token log-probabilities without a full (batch, length, vocabulary) float32 tensor.

A causal LM's logits for a batch of 8 × 512 tokens over SmolLM2's 49,152-word vocabulary are
800 MB in float32, and autograd keeps a second copy for ``log_softmax``'s backward. Here the
trunk runs once, then the LM head, ``log_softmax`` and the gather run over chunks of positions
under activation checkpointing: forward and backward each hold one chunk's logits at a time,
and the head's matmul is recomputed in backward (a small cost next to the memory saved).

Alignment: ``logprobs[:, t]`` is ``log π(input_ids[:, t+1] | input_ids[:, :t+1])``, so the result
is ``(B, T-1)`` and lines up with ``labels[:, 1:]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 128


def unwrap(model):
    """The plain transformers model under a peft wrapper (same weights, adapters still active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def trunk_and_head(model):
    """(trunk, lm_head) of a causal LM: the decoder stack returning hidden states, and the output layer."""
    base = unwrap(model)
    trunk = getattr(base, base.base_model_prefix)
    return trunk, base.get_output_embeddings()


def hidden_states(model, input_ids, attention_mask=None, position_ids=None):
    """Last-layer hidden states ``(B, T, H)`` from the trunk (no logits computed)."""
    trunk, _ = trunk_and_head(model)
    out = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def _chunk_logprobs(head, hidden, targets, temperature: float):
    logits = head(hidden).float()  # (B, c, V): one chunk only
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)  # (B, c)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (B, c)
    return picked - logz


def logprobs_from_hidden(head, hidden, targets, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK):
    """``log softmax(head(hidden)/temperature)`` at ``targets``: (B, L, H), (B, L) -> (B, L) float32."""
    pieces = []
    grad = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, hidden.shape[1], chunk_size):
        h = hidden[:, start : start + chunk_size]
        t = targets[:, start : start + chunk_size]
        if grad:
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, h, t, temperature))
    return torch.cat(pieces, dim=1)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Per-token log-probs of the next token: ``(B, T)`` ids -> ``(B, T-1)`` float32."""
    _, head = trunk_and_head(model)
    hidden = hidden_states(model, input_ids, attention_mask, position_ids)  # (B, T, H)
    return logprobs_from_hidden(head, hidden[:, :-1], input_ids[:, 1:], temperature=temperature, chunk_size=chunk_size)


def entropy_chunks(head, hidden, mask, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean per-token entropy (no grad) over ``mask``; one chunk of logits at a time."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    count = mask.sum().clamp(min=1)
    with torch.no_grad():
        for start in range(0, hidden.shape[1], chunk_size):
            logits = head(hidden[:, start : start + chunk_size]).float() / temperature
            logp = F.log_softmax(logits, dim=-1)
            ent = -(logp.exp() * logp).sum(-1)  # (B, c)
            total += (ent * mask[:, start : start + chunk_size]).sum()
    return total / count
