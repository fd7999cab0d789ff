"""Choosing a generation engine, and the vLLM engine for GPUs.

``rollout.engine`` is ``auto`` (vLLM when the ``vllm`` package is installed **and** a CUDA GPU is
present, else transformers), ``transformers`` or ``vllm`` (an error that says what is missing
when it cannot run). :func:`choose_engine` is a pure function of those two facts, so the choice
is unit-tested on any machine; :func:`make_engine` builds the engine.

:class:`VLLMEngine` keeps its own copy of the policy's weights inside vLLM: it starts from the
policy saved to a folder (a LoRA policy is saved merged), and ``sync_weights()`` — which the RL
stages call after every policy update — copies the current weights (LoRA merged as
``W + scale·B·A``, without touching the training model) into vLLM's model. vLLM is imported only
inside this class. alignlab's tests run on CPU without vLLM: they exercise this class's seams
(the folder it starts from, what ``sync_weights`` sends after an update, the sampling parameters
and outputs) against a fake ``vllm`` module (tests/unit/test_vllm_sync.py), not vLLM itself.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch

from alignlab.errors import ConfigError
from alignlab.losses.registry import choose as _choose
from alignlab.rollout.generate import Generation, GenerationEngine, SamplingParams, TransformersEngine, folded_weight

ENGINES = ("auto", "transformers", "vllm")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def gpu_present() -> bool:
    return torch.cuda.is_available()


def choose_engine(requested: str, *, vllm_available: bool, gpu: bool) -> str:
    """``"transformers"`` or ``"vllm"`` for ``rollout.engine=requested``; ConfigError if impossible."""
    _choose({name: name for name in ENGINES}, requested, "rollout.engine")
    if requested == "transformers":
        return "transformers"
    if requested == "vllm":
        if not vllm_available:
            raise ConfigError(
                "rollout.engine=vllm needs the vllm package: pip install 'alignlab[vllm]' (GPU only), or use rollout.engine=transformers"
            )
        if not gpu:
            raise ConfigError(
                "rollout.engine=vllm needs a CUDA GPU; none is visible. Use rollout.engine=transformers (or auto)"
            )
        return "vllm"
    return "vllm" if (vllm_available and gpu) else "transformers"


def make_engine(
    requested: str,
    model,
    tokenizer,
    *,
    batch_size: int = 16,
    gpu_memory_utilization: float = 0.3,
    seed: int = 0,
    dtype=None,
) -> GenerationEngine:
    """The engine for ``rollout.engine`` (see :func:`choose_engine`) sampling from ``model``; ``dtype``
    (``rollout.sampling_dtype``) is the transformers engine's (vLLM keeps its own)."""
    kind = choose_engine(requested, vllm_available=vllm_installed(), gpu=gpu_present())
    if kind == "vllm":
        return VLLMEngine(model, tokenizer, gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    return TransformersEngine(model, tokenizer, batch_size=batch_size, dtype=dtype)


# ----------------------------------------------------------------------------- weights
def merged_weights(model) -> dict[str, torch.Tensor]:
    """The policy's weights under plain Hugging Face names, LoRA adapters merged (the model is not modified)."""
    from alignlab.models.load import is_peft

    if not is_peft(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    lora_prefixes = set()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            lora_prefixes.add(name)
            merged[f"{name}.weight"] = folded_weight(module)
            if getattr(module.base_layer, "bias", None) is not None:
                merged[f"{name}.bias"] = module.base_layer.bias.detach()
    for key, value in base.state_dict().items():
        if "lora_" in key or any(key.startswith(p + ".") for p in lora_prefixes):
            continue
        merged[key] = value.detach()
    return merged


def response_tokens(token_ids, finish_reason: str | None, stop_reason, eos: int) -> tuple[list[int], bool]:
    """The tokens to train on and whether the response finished, from a vLLM output.

    Only tokens the policy sampled are kept: a response that stopped on a stop *token* that vLLM
    left out of ``token_ids`` gets that token back (``stop_reason`` is its id); one that stopped
    for any other reason (a stop string, an unknown cause) is **not** given an invented EOS — it
    counts as unfinished, so neither its log-probs nor its reward see a token nobody sampled.
    Anything after the first EOS is dropped.
    """
    toks = list(token_ids)
    finished = finish_reason == "stop"
    if finished and (not toks or toks[-1] != eos):
        if isinstance(stop_reason, int) and not isinstance(stop_reason, bool):
            toks.append(stop_reason)  # the sampled stop token, left out of the output by vLLM
        else:
            finished = False
    if eos in toks[:-1]:
        toks = toks[: toks.index(eos) + 1]
        finished = True
    if not toks:  # an engine returns at least one token; an empty cut response trains on nothing real
        toks, finished = [eos], False
    return toks, finished


class VLLMEngine:
    """Sampling with vLLM on a GPU; its weights follow the policy through :meth:`sync_weights`."""

    def __init__(self, model, tokenizer, *, gpu_memory_utilization: float = 0.3, seed: int = 0, dtype: str = "auto"):
        try:
            import vllm
        except ImportError:
            raise ConfigError("rollout.engine=vllm needs the vllm package: pip install 'alignlab[vllm]'") from None
        self._vllm = vllm
        self.model, self.tokenizer = model, tokenizer
        self._dir = tempfile.TemporaryDirectory(prefix="alignlab-vllm-")
        folder = Path(self._dir.name)
        self._save_merged(folder)
        self.llm = vllm.LLM(
            model=str(folder),
            tokenizer=str(folder),
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            dtype=dtype,
            enable_prefix_caching=False,
        )

    def _save_merged(self, folder: Path) -> None:
        from alignlab.models.load import is_peft

        plain = self.model.get_base_model() if is_peft(self.model) else self.model
        state = {k: v.contiguous() for k, v in merged_weights(self.model).items()}
        plain.save_pretrained(folder, state_dict=state, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    def _vllm_model(self):
        engine = self.llm.llm_engine
        try:  # vLLM < 0.8 layout
            return engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            return None

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Copy the policy's current (merged) weights into vLLM's model."""
        weights = list(merged_weights(self.model).items())
        target = self._vllm_model()
        if target is not None:
            target.load_weights(weights)
        else:  # newer vLLM: run the loader inside the worker
            self.llm.apply_model(lambda m: m.load_weights(weights))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        """One :class:`Generation` per prompt; the response's tokens are those the policy sampled (:func:`response_tokens`)."""
        vllm = self._vllm
        eos = self.tokenizer.eos_token_id
        sp = vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop_token_ids=[eos],
        )
        inputs = [{"prompt_token_ids": list(p)} for p in prompts]
        outs = self.llm.generate(inputs, sp, use_tqdm=False)
        result = []
        for prompt, out in zip(prompts, outs):
            o = out.outputs[0]
            toks, finished = response_tokens(o.token_ids, o.finish_reason, getattr(o, "stop_reason", None), eos)
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            result.append(Generation(list(prompt), toks, text, finished))
        return result
