"""Per-token log-probabilities without a full (batch, length, vocabulary) float32 tensor.

A causal LM's logits for a batch of 8 × 512 tokens over SmolLM2's 49,152-word vocabulary are
800 MB in float32, and autograd keeps them for ``log_softmax``'s backward. Here the trunk runs
once; the LM head then runs only on the positions a loss reads (response tokens: under half of a
typical batch), over chunks of tokens. A batch that fits in one chunk is computed directly; a
larger one runs each chunk under activation checkpointing, so at most one chunk's logits are
live and the head's matmul is recomputed in backward.

Alignment: ``logprobs[:, t]`` is ``log π(input_ids[:, t+1] | input_ids[:, :t+1])``, so the result
is ``(B, T-1)`` and lines up with ``labels[:, 1:]``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 1024  # tokens whose float32 logits are live at once (1024 × 49,152 × 4 B = 200 MB)


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
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype == torch.bool:
        # a 4-D mask reaches the attention as given; SDPA takes booleans, eager (and most others)
        # adds the mask to the scores, so it needs 0 / -inf-like floats (a bool would add 0 / 1)
        if getattr(unwrap(model).config, "_attn_implementation", None) != "sdpa":
            dtype = next(trunk.parameters()).dtype
            attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
                ~attention_mask, torch.finfo(dtype).min
            )
    out = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


LSE_ROWS = 16  # rows of logits per logsumexp call on the CPU (16 × 49,152 × 4 B = 3 MB)


def logsumexp_rows(logits: torch.Tensor, rows: int = LSE_ROWS) -> torch.Tensor:
    """``torch.logsumexp(logits, -1)`` for (N, V) logits, on the CPU ``rows`` rows at a time.

    ``logsumexp`` allocates two temporaries of its input's size (``x − max`` and its exponentials).
    For all N rows at once each is a fresh mapping of tens of MB, faulted in page by page on every
    call (measured in the DPO step on SmolLM2: 110–170 ms for 290–443 rows); blocks of 16 rows fit
    under the heap's mmap threshold (``trainers/host_memory``), so their memory is reused. Each row
    is computed as before, so the result is the same.
    """
    n = logits.shape[0]
    if logits.device.type != "cpu" or n <= rows:
        return torch.logsumexp(logits, dim=-1)
    return torch.cat([torch.logsumexp(logits[s : s + rows], dim=-1) for s in range(0, n, rows)])


class _LinearLogprobs(torch.autograd.Function):
    """``log softmax((h Wᵀ + b) / τ)[target]`` for a plain linear head, with a lean backward.

    Autograd's own backward of ``logsumexp`` and ``gather`` allocates three more (N, V) float32
    tensors (the exponentials, their product with the gradient, the scattered one-hot) while every
    trunk activation is still alive: the step's peak. Here the gradient w.r.t. the logits,
    ``g·(onehot(target) − softmax)/τ``, is built in the memory of the saved logits, so the head's
    backward needs no (N, V) tensor beyond them. The saved logits are overwritten: backward runs once
    (no ``retain_graph``; a second call raises).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float):
        logits = F.linear(hidden, weight, bias).float()  # (N, V)
        if temperature != 1.0:
            logits.div_(temperature)
        logz = logsumexp_rows(logits)  # (N,)
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
        ctx.save_for_backward(hidden, weight, logits, logz, targets)
        ctx.temperature, ctx.has_bias, ctx.used = temperature, bias is not None, False
        return picked - logz

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # grad: (N,)
        if ctx.used:
            raise RuntimeError("the LM head's log-prob backward ran twice (retain_graph is not supported here)")
        ctx.used = True
        hidden, weight, logits, logz, targets = ctx.saved_tensors
        g = logits.sub_(logz.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))  # -g·softmax, in place: (N, V)
        g.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1))  # + g·onehot(target)
        if ctx.temperature != 1.0:
            g.div_(ctx.temperature)
        g = g.to(weight.dtype)
        grad_hidden = g @ weight if ctx.needs_input_grad[0] else None  # (N, H)
        grad_weight = g.t() @ hidden if ctx.needs_input_grad[1] else None  # (V, H)
        grad_bias = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None


def _chunk_logprobs(head, hidden, targets, temperature: float):
    if type(head) is torch.nn.Linear:  # the usual LM head (an adapter-wrapped one takes the generic path)
        return _LinearLogprobs.apply(hidden, head.weight, head.bias, targets, temperature)
    logits = head(hidden).float()  # (N, V): one chunk of tokens only
    if temperature != 1.0:
        logits = logits / temperature
    logz = logsumexp_rows(logits)  # (N,)
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    return picked - logz


def selected_logprobs(head, hidden, targets, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK):
    """``log softmax(head(h)/temperature)[target]`` for token rows: (N, H), (N,) -> (N,) float32.

    One chunk of ``chunk_size`` tokens: computed directly (autograd keeps its logits). Several
    chunks: each under activation checkpointing, so forward and backward hold one chunk's logits
    at a time and the head's matmul is recomputed in backward.
    """
    n = hidden.shape[0]
    if n <= chunk_size or not (torch.is_grad_enabled() and hidden.requires_grad):
        pieces = [
            _chunk_logprobs(head, hidden[s : s + chunk_size], targets[s : s + chunk_size], temperature)
            for s in range(0, max(n, 1), chunk_size)
        ]
    else:
        pieces = [
            checkpoint(
                _chunk_logprobs,
                head,
                hidden[s : s + chunk_size],
                targets[s : s + chunk_size],
                temperature,
                use_reentrant=False,
            )
            for s in range(0, n, chunk_size)
        ]
    return torch.cat(pieces)


def logprobs_from_hidden(
    head, hidden, targets, *, mask=None, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK
):
    """Log-probs of ``targets`` at the positions ``mask`` selects: (B, L, H), (B, L) -> (B, L) float32.

    The LM head runs only where ``mask`` is true (all positions when None): prompt and padding
    positions cost nothing and read 0 in the result.
    """
    if mask is None:
        sel = torch.ones(targets.shape, dtype=torch.bool, device=targets.device)
    else:
        sel = mask.to(device=targets.device, dtype=torch.bool)
    picked = selected_logprobs(head, hidden[sel], targets[sel], temperature=temperature, chunk_size=chunk_size)  # (N,)
    return torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device).masked_scatter(sel, picked)


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Per-token log-probs of the next token: ``(B, T)`` ids -> ``(B, T-1)`` float32.

    ``mask`` (B, T-1), e.g. a batch's ``loss_mask``, limits the LM head to the positions a loss
    reads; the others are 0.
    """
    _, head = trunk_and_head(model)
    hidden = hidden_states(model, input_ids, attention_mask, position_ids)  # (B, T, H)
    return logprobs_from_hidden(
        head, hidden[:, :-1], input_ids[:, 1:], mask=mask, temperature=temperature, chunk_size=chunk_size
    )


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


def gathered_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None,
    source: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Log-probs of ``targets`` (N,) predicted by the hidden states at flat positions ``source`` (N,)
    (``row * T + col``) of a ``(R, T)`` batch -> (N,) float32.

    For layouts where the predicting position is not always the previous column (a shared prompt:
    ``data.collate.collate_shared_pairs``). A position listed twice is read twice; its gradient is
    the sum of both uses.
    """
    _, head = trunk_and_head(model)
    hidden = hidden_states(model, input_ids, attention_mask, position_ids)  # (R, T, H)
    picked = hidden.reshape(-1, hidden.shape[-1])[source]  # (N, H)
    return selected_logprobs(head, picked, targets, temperature=temperature, chunk_size=chunk_size)


def shares_prefix_exactly(model, *, tolerance: float | None = None) -> tuple[bool, str]:
    """Whether ``model`` honours a 4-D attention mask and position ids, so a shared prompt is exact.

    One small probe, no grad, eval mode: a row ``[prompt | a | b]`` whose mask hides ``a`` from
    ``b`` must give ``b`` the hidden states of the plain row ``[prompt | b]``. An attention
    implementation that ignores or rejects 4-D masks (or position ids) fails it. Returns
    (ok, reason); the tolerance is relative to the hidden states' scale (1e-4 in float32).
    """
    param = next(model.parameters())
    if tolerance is None:
        tolerance = 1e-4 if param.dtype == torch.float32 else 5e-2
    vocab = unwrap(model).config.vocab_size
    g = torch.Generator().manual_seed(0)
    n_p, n_a, n_b = 5, 4, 3
    toks = torch.randint(3, max(4, vocab), (n_p + n_a + n_b,), generator=g)
    prompt, b = toks[:n_p], toks[n_p + n_a :]  # the middle n_a tokens are "a"
    T = n_p + n_a + n_b
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    mask[n_p + n_a :, n_p : n_p + n_a] = False  # b does not see a
    positions = torch.cat([torch.arange(n_p + n_a), torch.arange(n_p, n_p + n_b)])
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            shared = hidden_states(
                model,
                toks[None].to(param.device),
                mask[None, None].to(param.device),
                positions[None].to(param.device),
            )[0, n_p + n_a :].float()  # (n_b, H)
            plain_ids = torch.cat([prompt, b])[None].to(param.device)
            plain = hidden_states(model, plain_ids, torch.ones_like(plain_ids))[0, n_p:].float()  # (n_b, H)
    except Exception as e:  # noqa: BLE001 - any failure means: do not share
        return False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        model.train(was)
    err = float((shared - plain).abs().max() / plain.abs().max().clamp(min=1e-6))
    if not err <= tolerance:
        return False, f"a 4-D mask changed the hidden states by {err:.2g} (relative; allowed {tolerance:g})"
    return True, f"relative difference {err:.2g}"


def prompt_sharing_works(model, log, what: str = "pair") -> bool:
    """Probe once (:func:`shares_prefix_exactly`) whether rows (``what``: pairs, groups) may share their prompt;
    log the answer or the fallback."""
    ok, why = shares_prefix_exactly(model)
    if ok:
        log.info("data.share_prompt: each %s's prompt computed once (probe: %s)", what, why)
    else:
        log.warning("data.share_prompt: this model's attention does not honour 4-D masks (%s); %ss unshared", why, what)
    return ok


def batch_logprobs(model, batch: dict) -> torch.Tensor:
    """Next-token log-probs (B, T-1) of a collated batch at its loss positions (0 elsewhere), on the model's device.

    A shared-prompt batch (``logp_source`` in it, see ``collate_shared_pairs``) gives them flat
    instead, (N,), one per loss position, aligned with its ``seq_index``.
    """
    device = next(model.parameters()).device
    if "logp_source" in batch:
        return gathered_logprobs(
            model,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["position_ids"].to(device),
            batch["logp_source"].to(device),
            batch["logp_target"].to(device),
        )
    return token_logprobs(
        model,
        batch["input_ids"].to(device),
        batch["attention_mask"].to(device),
        batch["position_ids"].to(device) if "position_ids" in batch else None,
        mask=batch["loss_mask"].to(device),
    )


@contextlib.contextmanager
def reference_mode(model):
    """The network as π_ref: eval mode (no dropout), no grad, LoRA adapters disabled."""
    was_training = model.training
    model.eval()
    from alignlab.models.load import is_peft

    adapters_off = model.disable_adapter() if is_peft(model) else contextlib.nullcontext()
    try:
        with torch.no_grad(), adapters_off:
            yield model
    finally:
        model.train(was_training)
