"""Forward passes over a rollout: the policy's and the reference's log-probs of the sampled tokens, values, entropy.

Shapes: B responses, P prompt columns (left-padded), R response columns (right-padded). With
``RLModels.share_prompt`` the rows that share a prompt run as one row (:mod:`alignlab.rollout.shared_prompt`);
the hidden states come back in the same ``(B, R, H)`` layout, so nothing after the trunk changes.
"""

from __future__ import annotations

import contextlib

import torch

from alignlab.losses.kl import kl_estimate
from alignlab.losses.reduce import masked_sum
from alignlab.models.logprobs import entropy_chunks, hidden_states, logprobs_from_hidden, reference_mode, trunk_and_head
from alignlab.models.policy import RLModels
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
        return response_logprobs(ref, exp, temperature=temperature, device=_device_of(ref), share=share)[0]
    with reference_mode(models.model) as m:
        return response_logprobs(m, exp, temperature=temperature, device=models.device, share=share)[0]


@torch.no_grad()
def rollout_pass(
    models: RLModels, exp: Experience, *, temperature: float, with_values: bool, batch_size: int, live: bool = False
) -> dict:
    """Fill ``exp.old_logprobs``, ``exp.ref_logprobs`` (and ``exp.values``) in chunks of ``batch_size`` rows.

    ``live``: the policy's pass keeps its graph, in ``exp.live_logprobs`` — for an update that is
    on-policy (one epoch over one minibatch: the log-probs it trains are π_old's, so this pass is
    also the training forward, and the second forward over the same tokens is saved).

    Returns stats: ``entropy`` (per-token mean entropy of π at ``temperature`` over valid tokens).
    """
    _, head = trunk_and_head(models.model)
    olds, refs, vals, lives = [], [], [], []
    ent_sum, ent_count = 0.0, 0.0
    for start in range(0, len(exp), batch_size):
        part = exp.select(torch.arange(start, min(start + batch_size, len(exp))))
        with torch.enable_grad() if live else contextlib.nullcontext():
            logprobs, values, h = policy_forward(models, part, temperature=temperature, with_values=with_values)
        if live:
            lives.append(logprobs)
            logprobs, h = logprobs.detach(), h.detach()
        mask = part.response_mask.to(h.device)
        n = float(mask.sum())
        ent_sum += float(entropy_chunks(head, h, mask, temperature=temperature)) * n
        ent_count += n
        olds.append(logprobs.float().cpu())
        refs.append(reference_logprobs(models, part, temperature=temperature).float().cpu())
        if values is not None:
            vals.append(values.float().cpu())
    exp.old_logprobs = torch.cat(olds)  # (B, R)
    exp.ref_logprobs = torch.cat(refs)  # (B, R)
    exp.values = torch.cat(vals) if vals else None  # (B, R)
    with torch.enable_grad():  # (the concatenation is part of the graph too)
        exp.live_logprobs = torch.cat(lives) if lives else None  # (B, R), with grad
    return {"entropy": ent_sum / max(ent_count, 1.0)}


def sequence_kl(exp: Experience, estimator: str) -> torch.Tensor:
    """Σ_t kl_t per response ``(B,)`` from the rollout's old and reference log-probs."""
    kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, estimator)  # (B, R)
    return masked_sum(kl, exp.response_mask, dim=-1)  # (B,)
