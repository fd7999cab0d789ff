"""Sampling responses: the generation-engine interface and its transformers implementation.

An engine turns a batch of tokenised prompts into responses. :class:`TransformersEngine` runs the
model's own modules in alignlab's decoding loop (:func:`alignlab.rollout.decode.decode`: a KV cache
grown in place, left padding, inverse-CDF sampling; SmolLM2-135M on a 2-core Xeon: decoding steps
1.3–1.4× faster than ``model.generate``'s at batches 8–128); a vLLM engine (for GPUs) plugs in behind the same two methods. Each result keeps the response token ids (ending at EOS when one was produced)
and whether the response finished with EOS or hit ``max_new_tokens``.

A LoRA policy samples with its adapters folded into the weights (:func:`folded_adapters`):
``W' = W + s·B·A`` per adapted layer for the duration of the call, so each decoding step runs one
matmul per layer instead of three plus the adapter bookkeeping (SmolLM2-135M, batch 8, 2-core CPU:
31 -> 45 tokens/s). The base weights are never written (the merged tensors are swapped in and the
originals put back), so π_ref — the same network with its adapter off — and exact resume are
untouched. On a CPU in float32 the linear layers then run on oneDNN-packed weights
(:func:`alignlab.rollout.packing.packed_linears`; ``packed=False`` turns it off): the decoding steps'
small-M matmuls, the LM head above all, were the bulk of a step. How close a call comes to the
machine's compute limit: :func:`alignlab.rollout.throughput.compute_limit_fraction`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from alignlab.data.collate import left_pad
from alignlab.models.logprobs import trunk_and_head
from alignlab.rollout.decode import cache_argument, decode
from alignlab.rollout.packing import packed_linears
from alignlab.rollout.precision import cast_weights, one_query_attention
from alignlab.trainers import host_memory


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.7
    """Logits are divided by this before sampling (0 means greedy)."""
    top_p: float = 1.0
    seed: int | None = None
    logprobs: bool = False
    """Also return each sampled token's log-prob under the model at ``temperature`` (``Generation.logprobs``)."""


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finished: bool  # ended with EOS (False: cut at max_new_tokens)
    meta: dict = field(default_factory=dict)
    logprobs: list[float] | None = None  # log π(token | context) at the sampling temperature, when asked for


@runtime_checkable
class GenerationEngine(Protocol):
    """What RL stages need from a sampler (``TransformersEngine``; ``rollout.vllm_engine.VLLMEngine``).

    ``generate`` returns one :class:`Generation` per prompt, in order; a response keeps its EOS
    token when it finished. ``sync_weights`` is called after every policy update, so an engine
    holding its own copy of the weights samples from the current policy.
    """

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]: ...

    def sync_weights(self) -> None: ...


def _foldable_lora_layers(model) -> list | None:
    """The active plain-LoRA layers of a peft model, or None when folding would not be exact.

    None when the model is not a peft model, when adapters are disabled (sampling from π_ref) or
    already merged, or when a layer uses a variant whose merge is not ``W + ΔW`` (DoRA).
    """
    if not callable(getattr(model, "get_base_model", None)):
        return None
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if not layers:
        return None
    for m in layers:
        if m.disable_adapters or m.merged or not hasattr(m, "get_delta_weight"):
            return None
        if any(m.use_dora.get(name, False) for name in m.active_adapters):
            return None
    return layers


def folded_weight(layer) -> torch.Tensor:
    """A LoRA layer's base weight with its active adapters added: ``W + Σ s·B·A`` (a new tensor)."""
    weight = layer.get_base_layer().weight.detach()
    for name in layer.active_adapters:
        if name in layer.lora_A:
            weight = weight + layer.get_delta_weight(name).detach().to(weight.dtype)
    return weight


@contextlib.contextmanager
def folded_adapters(model):
    """Within the block, ``model``'s LoRA adapters are folded into its weights (see the module docstring).

    Each adapted layer's base weight tensor is swapped for ``W + Σ ΔW`` over its active adapters and
    the adapter branch is switched off; on exit the original tensors (never modified) are put back.
    Costs one more copy of the adapted weights while sampling. A no-op for models it cannot fold exactly.
    """
    layers = _foldable_lora_layers(model)
    if layers is None:
        yield
        return
    swapped = []
    try:
        with torch.no_grad():
            for m in layers:
                weight = m.get_base_layer().weight
                folded = folded_weight(m)
                swapped.append((weight, weight.data))
                weight.data = folded
        with model.disable_adapter():
            yield
    finally:
        for weight, original in swapped:
            weight.data = original


@torch.no_grad()
def shared_prefill(model, ids: torch.Tensor, attn: torch.Tensor):
    """The KV cache of every row's prompt but its last token, each distinct prompt computed once
    (a ``DynamicCache`` for :func:`alignlab.rollout.decode.decode`); None when no two rows of the
    batch share a prompt.

    A group's k samples of one prompt are k identical left-padded rows: their prompt is run once
    (a batch of the distinct prompts, columns ``:-1``) and the cache rows are then copied out to the
    whole batch. The decoding loop continues from that cache: it runs the last prompt column and
    samples as it would have, with the same RNG draws (the cached keys and values equal the unshared ones up
    to float rounding). Saves (k − 1)/k of the prefill, which at these prompt lengths is a large part
    of a sampling call (a prompt token costs what a sampled one does, and there are more of them).
    """
    from transformers import DynamicCache

    if ids.shape[1] < 2:
        return None
    first: dict[tuple, int] = {}  # a distinct row -> the index of its first occurrence
    rows = [first.setdefault(tuple(row), i) for i, row in enumerate(ids.tolist())]
    if len(first) == len(rows):
        return None
    slot = {r: j for j, r in enumerate(first.values())}  # first occurrence -> its row in the prefill batch
    inverse = [slot[r] for r in rows]
    reps = torch.tensor(list(first.values()), device=ids.device)
    u_ids, u_attn = ids[reps, :-1], attn[reps, :-1]
    positions = (u_attn.cumsum(-1) - 1).clamp(min=0)  # as the decoding loop computes them
    trunk, _ = trunk_and_head(model)
    cache = DynamicCache(config=trunk.config)
    name = cache_argument(trunk)
    trunk(input_ids=u_ids, attention_mask=u_attn, position_ids=positions, use_cache=True, **{name: cache})
    cache.batch_select_indices(torch.tensor(inverse, device=ids.device))
    return cache


class TransformersEngine:
    """Batched sampling with :func:`alignlab.rollout.decode.decode` (KV cache, left padding, stop at EOS); a LoRA model
    samples with its adapters folded in (:func:`folded_adapters`), on packed weights on a CPU
    (``packed``; :mod:`alignlab.rollout.packing`); rows with the same prompt share its prefill
    (``share_prefill``: :func:`shared_prefill`). With ``dtype`` (``rollout.sampling_dtype``) it
    samples from a copy of the weights in that dtype, its decoding steps on
    :func:`alignlab.rollout.precision.one_query_attention` (:mod:`alignlab.rollout.precision`)."""

    def __init__(
        self,
        model,
        tokenizer,
        batch_size: int = 16,
        packed: bool = True,
        share_prefill: bool = True,
        dtype: torch.dtype | None = None,
    ):
        self.model, self.tokenizer, self.batch_size, self.packed = model, tokenizer, batch_size, packed
        self.share_prefill, self.dtype = share_prefill, dtype

    def sync_weights(self) -> None:
        """Nothing to do: this engine samples from the training model itself."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        # A seeded call samples from its own RNG stream and leaves the caller's (CPU and CUDA) untouched.
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=params.seed is not None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            try:
                rows = max(1, min(self.batch_size, len(prompts)))  # of a decoding step
                with contextlib.ExitStack() as stack:
                    if device.type == "cpu":  # the decoding steps' activations stay mapped between steps
                        stack.enter_context(host_memory.heap_kept())
                    stack.enter_context(folded_adapters(model))
                    if self.dtype is not None and self.dtype != next(model.parameters()).dtype:
                        stack.enter_context(cast_weights(model, self.dtype))  # after folding: casts W + ΔW
                        stack.enter_context(one_query_attention(trunk_and_head(model)[0]))
                    if self.packed:  # on a CPU in float32, or bfloat16 at small batches (packing_available)
                        stack.enter_context(packed_linears(model, rows))
                    out = self._sample(prompts, params, model, device, eos, pad)
            finally:
                model.train(was_training)
        return out

    def _sample(self, prompts, params, model, device, eos, pad) -> list[Generation]:
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            ids, attn = (t.to(device) for t in left_pad(chunk, pad))
            new_ids, logps = decode(
                model,
                ids,
                attn,
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                eos=eos,
                pad=pad,
                cache=shared_prefill(model, ids, attn) if self.share_prefill else None,
                logprobs=params.logprobs,
            )
            logps = logps.cpu().tolist() if logps is not None else [None] * len(chunk)
            for prompt, toks, lp in zip(chunk, new_ids.tolist(), logps):
                if eos in toks:
                    toks = toks[: toks.index(eos) + 1]
                    finished = True
                else:
                    finished = False
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                out.append(
                    Generation(list(prompt), toks, text, finished, logprobs=None if lp is None else lp[: len(toks)])
                )
        return out
