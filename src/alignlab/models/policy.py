"""The RL stages' networks: the policy π_θ, its frozen reference π_ref and (PPO) the value function.

The policy's dropout is switched off (log-probs of the same tokens must not change between the
rollout and the update, or the ratio carries noise). π_ref is, with LoRA, the same network with its
adapter disabled; with full fine-tuning a frozen deep copy of the initial weights (one more copy of
the weights, about 0.54 GB for SmolLM2-135M in float32, in memory or, on a CPU by default, in a
file read module by module: :mod:`alignlab.models.streamed`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch


def disable_dropout(model) -> None:
    """Set every dropout probability of ``model`` to 0 (nn.Dropout modules and attention dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_dropout"):
        config.attention_dropout = 0.0


@dataclass
class RLModels:
    """The policy, its reference and (PPO) its value function."""

    model: Any  # π_θ (a peft model with LoRA, else a plain causal LM)
    tokenizer: Any
    ref_model: Any = None  # frozen copy of the initial weights (full fine-tuning); None with LoRA
    value_head: Any = None  # models.value.ValueHead or None
    value_model: Any = None  # a separate trunk for the value head, or None (head on the policy's trunk)
    share_prompt: bool = False  # rows with the same prompt compute it once (rollout.shared_prompt)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_model is not None:
            params += [p for p in self.value_model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def value_modules(self) -> torch.nn.ModuleDict:
        """What the value function adds to the policy (saved next to it; empty without a value)."""
        mods = {}
        if self.value_head is not None:
            mods["head"] = self.value_head
        if self.value_model is not None:
            mods["model"] = self.value_model
        return torch.nn.ModuleDict(mods)


def build_models(
    model_cfg,
    *,
    seed: int,
    value: str | None = None,
    reference: str | None = None,
    devices: dict | None = None,
    reference_weights: str = "memory",
    weights_dir: str | None = None,
) -> RLModels:
    """Load the policy, set up π_ref, and a value head on its trunk (``head``) or a second copy (``separate``).

    π_ref is the model folder ``reference`` when given (loaded frozen: one more copy of the weights),
    else the policy as loaded: with LoRA the same network with its adapter disabled, with full
    fine-tuning a frozen copy. ``devices`` (:func:`alignlab.models.placement.plan`): where the frozen
    copy and a separate value trunk go (default: with the policy); the value head stays with the policy.
    ``reference_weights`` (memory, disk or auto): where a frozen copy keeps its weights
    (:mod:`alignlab.models.streamed`; disk: an unnamed file in ``weights_dir``).
    """
    from alignlab.config import from_dict, to_dict
    from alignlab.config.sections import ModelConfig
    from alignlab.models.load import is_peft, load_model
    from alignlab.models.logprobs import unwrap
    from alignlab.models.value import ValueHead

    loaded = load_model(model_cfg, seed=seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    disable_dropout(model)
    ref_model = None
    if reference:
        ref_cfg = from_dict(ModelConfig, {**to_dict(model_cfg), "name_or_path": reference, "lora": {"enabled": False}})
        ref_model = load_model(ref_cfg, seed=seed, for_training=False).model.eval().requires_grad_(False)
        disable_dropout(ref_model)
    elif not is_peft(model):
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    devices = devices or {}
    if ref_model is not None and devices.get("reference"):
        ref_model.to(devices["reference"])
    if ref_model is not None and reference_weights == "auto":
        reference_weights = "disk" if next(ref_model.parameters()).device.type == "cpu" else "memory"
    if ref_model is not None and reference_weights == "disk":
        from alignlab.models.streamed import stream_weights

        stream_weights(ref_model, directory=weights_dir)
    value_head = value_model = None
    if value is not None:
        device = next(model.parameters()).device
        value_head = ValueHead(unwrap(model).config.hidden_size, device=device)
        if value == "separate":
            value_model = load_model(model_cfg, seed=seed).model
            disable_dropout(value_model)
            if devices.get("value"):
                value_model.to(devices["value"])
    return RLModels(model, tokenizer, ref_model, value_head, value_model)


class TrainableState:
    """``state_dict`` / ``load_state_dict`` over a module's trainable tensors only (for checkpoints:
    a LoRA value model stores its adapter, not the frozen base weights)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device))
