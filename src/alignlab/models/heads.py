"""Scalar heads on a causal LM's trunk: the reward model.

A reward model r(x, y) is the policy's decoder stack (the trunk, without its LM head) and a
linear head ``H -> 1`` read at the **last real token** of each row — the EOS that ends the
response. "Last real" is found from ``attention_mask``, so the same text gets the same score
whether the batch is padded on the right (training) or on the left (generation), and whatever the
other rows' lengths. Position ids are rebuilt from the mask too (``cumsum - 1``), so left padding
does not shift positions (Llama's rotary embeddings only see position differences and would not
mind; a model with absolute positions would).

The backbone is either fully trainable or carries LoRA adapters (``models.load.apply_lora``); the
head is always trained. Normalisation: after training, ``shift`` and ``scale`` are set so that the
reference policy's responses on a prompt set score mean 0, std 1 (see ``trainers.reward``);
:meth:`RewardModel.score` applies them, :meth:`RewardModel.forward` does not.

A saved reward model is a folder::

    model.safetensors | adapter_model.safetensors, config, tokenizer   the backbone, HF format
    reward_head.safetensors                                            {"weight": (K, H), "bias": (K,)}

``K > 1`` heads make an ensemble on one trunk (each head its own initialisation and its own
Bradley–Terry loss): the reward is their mean, and their spread (:meth:`RewardModel.disagreement`)
is an over-optimisation signal — it grows where the policy leaves the data the heads agree on.
    reward_norm.json                                                   {"shift", "scale", ...}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignlab.errors import ModelLoadError
from alignlab.models.logprobs import hidden_states, unwrap

HEAD_FILE = "reward_head.safetensors"
NORM_FILE = "reward_norm.json"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last real token: (B, T) 0/1 mask -> (B,) long.

    ``argmax`` of ``mask * [0, 1, ..., T-1]`` is the largest column whose mask is 1: correct for
    left and right padding alike (a row with no real token gives 0).
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"reward scores need a 2-D (B, T) attention mask; got shape {tuple(attention_mask.shape)}")
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * cols).argmax(dim=-1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only: (B, T) -> (B, T); padding gets a harmless clamp."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class RewardModel(torch.nn.Module):
    """r(x, y): a causal LM trunk and a scalar head at the last real token."""

    def __init__(self, backbone, *, seed: int = 0, shift: float = 0.0, scale: float = 1.0, heads: int = 1):
        super().__init__()
        self.backbone = backbone
        hidden = unwrap(backbone).config.hidden_size
        self.head = torch.nn.Linear(hidden, heads, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # small random init: a zero head would give the trunk no gradient
            self.head.weight.copy_(torch.randn(heads, hidden, generator=g) / (hidden + 1) ** 0.5)
            self.head.bias.zero_()
        device = next(backbone.parameters()).device
        self.head.to(device)
        self.shift, self.scale = float(shift), float(scale)

    @property
    def n_heads(self) -> int:
        return self.head.out_features

    def forward_heads(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw rewards of every head: (B, T) ids -> (B, K) float32."""
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        hidden = hidden_states(self.backbone, input_ids, attention_mask, position_ids)  # (B, T, H)
        last = last_token_index(attention_mask)  # (B,)
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
        return self.head(picked.float())  # (B, K)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw (unnormalised) rewards, the mean over heads: (B, T) ids -> (B,) float32."""
        return self.forward_heads(input_ids, attention_mask, position_ids).mean(-1)  # (B,)

    @torch.no_grad()
    def disagreement(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """Std over heads of the normalised rewards (B,); 0 with one head."""
        if self.n_heads == 1:
            return torch.zeros(input_ids.shape[0])
        return (self.forward_heads(input_ids, attention_mask, position_ids) / self.scale).std(-1)

    def score(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        """Normalised rewards ``(raw - shift) / scale``, (B,)."""
        return (self.forward(input_ids, attention_mask, position_ids) - self.shift) / self.scale

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The trunk's trainable weights (all, or the LoRA adapters) and the head; not the unused LM head."""
        from alignlab.models.logprobs import trunk_and_head

        trunk, _ = trunk_and_head(self.backbone)
        params = [p for p in trunk.parameters() if p.requires_grad]
        return params + list(self.head.parameters())


# ----------------------------------------------------------------------------- save / load
def save_reward_model(
    rm: RewardModel, tokenizer, folder: Path, *, base: str | None, seed: int = 0, norm: dict | None = None
) -> None:
    """Backbone via ``models.load.save_pretrained`` (adapter or full), the head, and (if given) the normalisation."""
    from safetensors.torch import save_file

    from alignlab.models.load import save_pretrained

    folder = Path(folder)
    save_pretrained(rm.backbone, tokenizer, folder, base=base, seed=seed)
    head = {
        "weight": rm.head.weight.detach().float().cpu().contiguous(),
        "bias": rm.head.bias.detach().float().cpu().contiguous(),
    }
    save_file(head, str(folder / HEAD_FILE))
    if norm is not None:
        (folder / NORM_FILE).write_text(json.dumps(norm, indent=1), encoding="utf-8")


def _load_head(rm: RewardModel, folder: Path) -> None:
    from safetensors.torch import load_file

    path = folder / HEAD_FILE
    if not path.is_file():
        raise ModelLoadError(f"{folder}: not a reward model folder (no {HEAD_FILE}); train one with `alignlab reward`")
    state = load_file(str(path))
    try:
        rm.head.load_state_dict({k: v.to(rm.head.weight.device) for k, v in state.items()})
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: head does not fit this backbone ({str(e).splitlines()[0]})") from None


def restore_reward_model(rm: RewardModel, folder: Path) -> None:
    """Load a checkpoint written by :func:`save_reward_model` into ``rm`` (for exact resume)."""
    from alignlab.models.load import restore_weights

    folder = Path(folder)
    restore_weights(rm.backbone, folder, pattern="model*.safetensors")
    _load_head(rm, folder)


@dataclass
class LoadedReward:
    model: RewardModel
    tokenizer: Any
    norm: dict


def load_reward_model(
    folder: str | Path, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> LoadedReward:
    """A trained reward model for scoring (eval mode; a LoRA backbone is merged into its base)."""
    from alignlab.config import ModelConfig, from_dict
    from alignlab.models.load import load_model

    folder = Path(folder).expanduser()
    if not (folder / HEAD_FILE).is_file():
        raise ModelLoadError(f"{folder}: not a reward model folder (no {HEAD_FILE}); give a reward run's final/ folder")
    cfg = from_dict(
        ModelConfig,
        {"name_or_path": str(folder), "device": device, "dtype": dtype, "trust_remote_code": trust_remote_code},
    )
    loaded = load_model(cfg, for_training=False)
    norm = json.loads((folder / NORM_FILE).read_text(encoding="utf-8")) if (folder / NORM_FILE).is_file() else {}
    from safetensors import safe_open

    with safe_open(str(folder / HEAD_FILE), framework="pt") as f:
        heads = f.get_slice("weight").get_shape()[0]
    rm = RewardModel(loaded.model, shift=norm.get("shift", 0.0), scale=norm.get("scale", 1.0), heads=heads)
    _load_head(rm, folder)
    rm.eval()
    return LoadedReward(rm, loaded.tokenizer, norm)


@torch.no_grad()
def score_examples(
    rm: RewardModel, examples: list, pad_id: int, *, batch_size: int = 16, normalised: bool = False
) -> torch.Tensor:
    """Scores of tokenised (prompt, response) examples (``data.tokenize.Example``), (N,) float32 on CPU; eval mode, no grad."""
    from alignlab.data.collate import pad_examples

    device = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    out = []
    try:
        for s in range(0, len(examples), batch_size):
            batch = pad_examples(examples[s : s + batch_size], pad_id)
            raw = rm(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out.append(((raw - rm.shift) / rm.scale if normalised else raw).float().cpu())
    finally:
        rm.train(was)
    return torch.cat(out) if out else torch.zeros(0)
