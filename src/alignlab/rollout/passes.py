"""Forward passes over a rollout: the policy's and the reference's log-probs of the sampled tokens, values, entropy.

Shapes: B responses, P prompt columns (left-padded), R response columns (right-padded). With
``RLModels.share_prompt`` the rows that share a prompt run as one row (:mod:`alignlab.rollout.shared_prompt`);
the hidden states come back in the same ``(B, R, H)`` layout, so nothing after the trunk changes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from alignlab.losses.kl import kl_estimate
from alignlab.losses.reduce import masked_sum
from alignlab.models.logprobs import entropy_chunks, hidden_states, logprobs_from_hidden, reference_mode, trunk_and_head
from alignlab.models.policy import RLModels
from alignlab.models.streamed import holding
from alignlab.rollout.experience import Experience
from alignlab.rollout.shared_prompt import shared_layout, shared_response_hidden


def response_hidden(model, exp: Experience, device, share: bool = False) -> torch.Tensor:
    """Hidden states at the positions that predict each response token: ``(B, R, H)``.

    ``share``: rows with the same prompt compute it once (when some do; exact where the model honours 4-D masks)."""
    layout = shared_layout(exp) if share else None
    if layout is not None:
        return shared_response_hidden(model, layout, device)
    P = exp.prompt_width
    hidden = hidden_states(
        model, exp.input_ids.to(device), exp.attention_mask.to(device), exp.position_ids.to(device)
    )  # (B, P+R, H)
    return hidden[:, P - 1 : -1]  # (B, R, H): position P-1+t predicts response token t


def response_logprobs(
    model, exp: Experience, *, temperature: float, device, share: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(y_t) at ``temperature`` ``(B, R)`` float32, the hidden states ``(B, R, H)``)."""
    h = response_hidden(model, exp, device, share)
    _, head = trunk_and_head(model)
    mask = exp.response_mask.to(device)  # the head runs only on real response tokens; padding reads 0
    return logprobs_from_hidden(head, h, exp.response_ids.to(device), mask=mask, temperature=temperature), h


def policy_forward(
    models: RLModels, exp: Experience, *, temperature: float, with_values: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logprobs ``(B, R)``, values ``(B, R)`` or None, policy hidden states ``(B, R, H)``), with grad."""
    share = models.share_prompt
    logprobs, h = response_logprobs(models.model, exp, temperature=temperature, device=models.device, share=share)
    values = None
    if with_values and models.value_head is not None:
        if models.value_model is None:
            vh = h
        else:  # a separate trunk, maybe on a device of its own (models.placement): its states come to the head
            vh = response_hidden(models.value_model, exp, _device_of(models.value_model), share).to(models.device)
        values = models.value_head(vh)  # (B, R)
    return logprobs, values, h


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def reference_logprobs(models: RLModels, exp: Experience, *, temperature: float) -> torch.Tensor:
    """log π_ref(y_t) ``(B, R)``: the adapter-less policy (LoRA) or the frozen initial copy."""
    share = models.share_prompt
    if models.ref_model is not None:  # on its own device (models.placement); the log-probs stay there
        ref = models.ref_model
        with holding(ref, trunk_and_head(ref)[1]):  # (a streamed copy: its head is read without a call)
            return response_logprobs(ref, exp, temperature=temperature, device=_device_of(ref), share=share)[0]
    with reference_mode(models.model) as m:
        return response_logprobs(m, exp, temperature=temperature, device=models.device, share=share)[0]


@contextlib.contextmanager
def one_embedding_backward(model):
    """Within the block the input embedding's backward waits: each forward's embedding output enters
    the graph as a leaf that collects its gradient, and on leaving the block one lookup of all the
    token ids, backpropagated once, carries them into the embedding weight (the same sums).

    For a backward run chunk by chunk: the embedding's gradient is a dense ``(vocab, H)`` tensor
    (SmolLM2: 113 MB, zero-filled before the rows are added), so once per chunk it cost more than a
    chunk's matrix products (0.2 s of fresh pages each, measured on SmolLM2 in 1-group chunks).
    """
    emb = model.get_input_embeddings()
    pending = []

    def cut(module, args, out):
        if not (torch.is_grad_enabled() and out.requires_grad):
            return out
        leaf = out.detach().requires_grad_()
        pending.append((args[0], leaf))
        return leaf

    handle = emb.register_forward_hook(cut)
    try:
        yield
    finally:
        handle.remove()
    done = [(ids, leaf.grad) for ids, leaf in pending if leaf.grad is not None]
    if done:
        ids = torch.cat([i.reshape(-1) for i, _ in done])
        grads = torch.cat([g.reshape(-1, g.shape[-1]) for _, g in done])
        with torch.enable_grad():
            emb(ids).backward(grads)


@torch.no_grad()
def rollout_pass(
    models: RLModels,
    exp: Experience,
    *,
    temperature: float,
    with_values: bool,
    batch_size: int,
    backward: Callable[[Experience, slice, torch.Tensor], None] | None = None,
    backward_rows: int = 0,
    group: int = 1,
) -> dict:
    """Fill ``exp.old_logprobs``, ``exp.ref_logprobs`` (and ``exp.values``) in chunks of ``batch_size`` rows.

    ``backward`` (an on-policy update: one epoch over one minibatch, so the log-probs it trains
    *are* π_old's): the reference's pass runs first; then the policy's keeps its graph, chunk by
    chunk of ``backward_rows`` rows (rounded to whole groups of ``group`` rows: a group method's
    advantages are computed within a group), and once a chunk's log-probs are in ``exp`` (the
    rows after it hold 0), ``backward(exp, rows, logprobs)`` backpropagates the update's loss
    through that chunk's log-probs ``(n, R)`` and its graph is freed. So this pass is also the
    training forward, and one chunk's activations are alive at a time.

    Returns stats: ``entropy`` (per-token mean entropy of π at ``temperature`` over valid tokens)
    and, with ``backward``, ``time/backward`` (the seconds spent in it).
    """
    _, head = trunk_and_head(models.model)
    B, R = exp.response_ids.shape

    def chunks(size: int):
        for start in range(0, B, size):
            rows = slice(start, min(start + size, B))
            yield rows, exp.select(torch.arange(rows.start, rows.stop))

    refs = [reference_logprobs(models, part, temperature=temperature).float().cpu() for _, part in chunks(batch_size)]
    exp.ref_logprobs = torch.cat(refs)  # (B, R)
    if backward is not None:
        batch_size = max(group, (backward_rows or batch_size) // group * group)
        exp.old_logprobs = torch.zeros(B, R)
    olds, vals = [], []
    ent_sum, ent_count, backward_s = 0.0, 0.0, 0.0
    with one_embedding_backward(models.model) if backward is not None else contextlib.nullcontext():
        for rows, part in chunks(batch_size):
            with torch.enable_grad() if backward is not None else contextlib.nullcontext():
                live, values, h = policy_forward(models, part, temperature=temperature, with_values=with_values)
            logprobs, h = live.detach(), h.detach()
            mask = part.response_mask.to(h.device)
            n = float(mask.sum())
            ent_sum += float(entropy_chunks(head, h, mask, temperature=temperature)) * n
            ent_count += n
            olds.append(logprobs.float().cpu())
            if values is not None:
                vals.append(values.float().cpu())
            if backward is not None:
                exp.old_logprobs[rows] = olds[-1]
                t0 = time.perf_counter()
                with torch.enable_grad():
                    backward(exp, rows, live)
                backward_s += time.perf_counter() - t0
            del live  # (its graph)
        t0 = time.perf_counter()
    backward_s += time.perf_counter() - t0  # (the embedding's)
    exp.old_logprobs = torch.cat(olds)  # (B, R)
    exp.values = torch.cat(vals) if vals else None  # (B, R)
    stats = {"entropy": ent_sum / max(ent_count, 1.0)}
    if backward is not None:
        exp.backpropagated = True
        stats["time/backward"] = backward_s
    return stats


def sequence_kl(exp: Experience, estimator: str) -> torch.Tensor:
    """Σ_t kl_t per response ``(B,)`` from the rollout's old and reference log-probs."""
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, estimator)  # (B, R)
    return masked_sum(kl, exp.response_mask, dim=-1)  # (B,)
