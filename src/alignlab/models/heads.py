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

``K > 1`` heads make an ensemble on one trunk (each head its own initialisation and its own
Bradley–Terry loss): the reward is their mean, and their spread (:meth:`RewardModel.disagreement`)
is an over-optimisation signal — it grows where the policy leaves the data the heads agree on.

A saved reward model is a folder in one of two layouts (:func:`save_reward_model`; every reader,
:func:`load_reward_model`, takes both):

``hf`` — what a reward run's ``final/`` holds: the standard Hugging Face sequence-classification
folder, so ``AutoModelForSequenceClassification.from_pretrained(folder)`` (or any tool that loads
one) gets the trained reward model::

    config.json        architectures [<Arch>ForSequenceClassification], num_labels K, pad_token_id,
                       alignlab_reward {shift, scale, heads, reduce, ...}
    model.safetensors  the full trunk (a LoRA adapter merged in) and the head as ``score.weight`` (K, H)
    tokenizer files    whose pad token is config.pad_token_id
    reward_norm.json   a copy of the normalisation, for scripts that read the older layout

  alignlab's reward is ``mean(logits)`` over the K labels, normalised ``(mean(logits) − shift) /
  scale``. HF's classifier reads the rightmost token that is not ``pad_token_id``; alignlab reads
  the last token whose attention mask is 1. They agree for left and right padding alike once the
  pad token never ends a real sequence, so the export never uses EOS (which ends every finished
  response) as the pad: it keeps the tokenizer's pad when it differs from EOS, else takes UNK,
  else adds a ``<|pad|>`` token. (A response whose text spells out that special token at its very
  end would still be read one token early by HF.) HF's positions count from 0 with left padding
  where alignlab's skip the pads; rotary models see only position differences, so the numbers
  agree to float rounding.

  Normalisation is not folded into the weights: ``(w·h + b − shift)/scale`` needs a bias (for the
  shift) that ``LlamaForSequenceClassification.score`` and most causal-LM classifiers lack. It
  lives in ``alignlab_reward`` instead. alignlab's head does have a bias, which the export folds
  into the shift (``shift − mean(b)``), so normalised scores are unchanged and the HF logits are
  alignlab's raw scores. The Bradley–Terry and listwise losses never move that bias (only
  ``center_rewards`` and ``magnitude_penalty`` do); an ensemble whose heads' biases differ keeps
  ``head_offsets`` (``b − mean(b)``, mean 0) in ``alignlab_reward``, added to each head's logit
  for the disagreement, not to their mean.

``checkpoint`` — the trunk as trained (full weights, or only the LoRA adapter) plus the head;
what checkpoints use (small with LoRA, and resume restores it exactly), and what ``final/``
folders written before the ``hf`` layout hold::

    model.safetensors | adapter_model.safetensors, config, tokenizer   the backbone, HF format
    reward_head.safetensors                                            {"weight": (K, H), "bias": (K,)}
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
CONFIG_KEY = "alignlab_reward"  # the config.json entry of an ``hf`` layout folder
LAYOUTS = ("hf", "checkpoint")
PAD_TOKEN = "<|pad|>"  # added only when a tokenizer has neither a pad nor an UNK distinct from EOS


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

    def forward_at(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Raw rewards of every head read at flat positions ``index`` (N,) (``row * T + col``): -> (N, K).

        For rows that hold several responses (a shared prompt, ``collate_shared_pairs``): the
        caller gives the 4-D mask, the position ids and each response's last token.
        """
        hidden = hidden_states(self.backbone, input_ids, attention_mask, position_ids)  # (R, T, H)
        picked = hidden.reshape(-1, hidden.shape[-1])[index]  # (N, H)
        return self.head(picked.float())  # (N, K)

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
    rm: RewardModel,
    tokenizer,
    folder: Path,
    *,
    base: str | None,
    seed: int = 0,
    norm: dict | None = None,
    layout: str = "hf",
) -> None:
    """Write ``rm`` as a reward-model folder in ``layout`` (see the module docstring).

    ``hf``: a Hugging Face sequence-classification folder (LoRA merged; falls back to
    ``checkpoint`` with a warning for an architecture transformers has no classifier for).
    ``checkpoint``: the backbone via ``models.load.save_pretrained`` (adapter or full), the head,
    and (if given) the normalisation. ``rm`` itself is left as it was in both.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"reward-model layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if layout == "hf":
        try:
            _save_hf_layout(rm, tokenizer, Path(folder), base=base, seed=seed, norm=norm)
            return
        except _NoClassifier as e:
            import logging

            logging.getLogger("alignlab").warning("%s; saving the reward model in the checkpoint layout", e)
    _save_checkpoint_layout(rm, tokenizer, Path(folder), base=base, seed=seed, norm=norm)


class _NoClassifier(Exception):
    """transformers has no sequence-classification class for this architecture."""


def _save_checkpoint_layout(rm: RewardModel, tokenizer, folder: Path, *, base, seed, norm) -> None:
    from safetensors.torch import save_file

    from alignlab.models.load import save_pretrained

    save_pretrained(rm.backbone, tokenizer, folder, base=base, seed=seed)
    head = {
        "weight": rm.head.weight.detach().float().cpu().contiguous(),
        "bias": rm.head.bias.detach().float().cpu().contiguous(),
    }
    save_file(head, str(folder / HEAD_FILE))
    if norm is not None:
        (folder / NORM_FILE).write_text(json.dumps(norm, indent=1), encoding="utf-8")


def classifier_pad(tokenizer) -> tuple[Any, int, bool]:
    """``(tokenizer, pad_id, added)``: a pad token that is not EOS, so HF's "rightmost non-pad
    token" is alignlab's "last real token" (see the module docstring).

    The tokenizer's own pad if it differs from EOS; else UNK (on a copy of the tokenizer); else a
    new ``<|pad|>`` token (``added``: the embeddings must grow by one row).
    """
    import copy

    eos = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        return tokenizer, tokenizer.pad_token_id, False
    tok = copy.deepcopy(tokenizer)
    if tok.unk_token_id is not None and tok.unk_token_id != eos:
        tok.pad_token = tok.unk_token
        return tok, tok.pad_token_id, False
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    return tok, tok.pad_token_id, True


def _classifier_head(model, folder) -> torch.nn.Linear:
    """The linear head of a transformers sequence classifier (``score`` for causal LMs)."""
    prefix = getattr(model, "base_model_prefix", "model")
    heads = [m for n, m in model.named_children() if n != prefix and isinstance(m, torch.nn.Linear)]
    if len(heads) != 1:
        raise _NoClassifier(f"{folder}: {type(model).__name__} has no single linear classification head")
    return heads[0]


def _save_hf_layout(rm: RewardModel, tokenizer, folder: Path, *, base, seed, norm) -> None:
    """The Hugging Face sequence-classification folder (module docstring, layout ``hf``)."""
    import copy

    from transformers import AutoModelForSequenceClassification

    from alignlab.models.load import INFO_FILE, is_peft, quiet_hf

    tokenizer, pad_id, added = classifier_pad(tokenizer)
    merged = is_peft(rm.backbone)
    lm = unwrap(rm.backbone)
    if merged or added:  # work on a copy: the model being trained keeps its adapters and vocabulary
        lm = copy.deepcopy(rm.backbone)
        lm = lm.merge_and_unload() if merged else lm
        if added:
            lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the pad's row is never read
    trunk = getattr(lm, lm.base_model_prefix)
    weight = next(trunk.parameters())
    K = rm.n_heads
    config = copy.deepcopy(lm.config)
    config.num_labels = K
    config.id2label = {0: "reward"} if K == 1 else {k: f"reward_{k}" for k in range(K)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.pad_token_id = pad_id
    try:
        with torch.device("meta"), quiet_hf():  # no memory: its trunk and head are replaced below
            classifier = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError) as e:
        raise _NoClassifier(f"transformers has no sequence classifier for {type(lm).__name__} ({e})") from None
    old = _classifier_head(classifier, folder)
    head = torch.nn.Linear(old.in_features, K, bias=old.bias is not None, device=weight.device, dtype=weight.dtype)
    bias = rm.head.bias.detach().double().cpu()  # (K,)
    shift = float(norm["shift"]) if norm is not None else rm.shift
    scale = float(norm["scale"]) if norm is not None else rm.scale
    offsets = None
    with torch.no_grad():
        head.weight.copy_(rm.head.weight.detach())
        if head.bias is not None:
            head.bias.copy_(rm.head.bias.detach())
        else:  # fold the bias into the shift: (w·h + b − shift) = (w·h − (shift − b))
            shift -= float(bias.mean())
            if K > 1 and bool((bias - bias.mean()).abs().max() > 0):
                offsets = (bias - bias.mean()).tolist()
    for name, module in classifier.named_children():
        if module is old:
            setattr(classifier, name, head)
    setattr(classifier, classifier.base_model_prefix, trunk)
    meta = {k: v for k, v in (norm or {}).items() if k not in ("shift", "scale")}
    meta.update(
        layout="hf",
        score="(mean(logits) - shift) / scale",
        shift=shift,
        scale=scale,
        heads=K,
        reduce="mean",
        base=base,
        seed=seed,
        merged_adapter=merged,
    )
    if offsets is not None:
        meta["head_offsets"] = offsets
    setattr(classifier.config, CONFIG_KEY, meta)
    classifier.config.architectures = [type(classifier).__name__]
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_hf():
        classifier.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    (folder / INFO_FILE).write_text(
        json.dumps({"base": base, "seed": seed, "adapter": False, "layout": "hf"}), encoding="utf-8"
    )
    norm_copy = {**(norm or {}), "shift": shift, "scale": scale}
    (folder / NORM_FILE).write_text(json.dumps(norm_copy, indent=1), encoding="utf-8")


def reward_layout(folder: str | Path) -> str | None:
    """``"hf"``, ``"checkpoint"``, or None when ``folder`` is not a reward-model folder."""
    folder = Path(folder)
    if (folder / HEAD_FILE).is_file():
        return "checkpoint"
    try:
        archs = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    return "hf" if any(str(a).endswith("ForSequenceClassification") for a in archs) else None


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
    """A trained reward model for scoring, from a folder in either layout (eval mode; a LoRA
    backbone is merged into its base). ``norm`` is the normalisation record (``shift``, ``scale``,
    the truncation lengths it was trained with, ...)."""
    from alignlab.config import ModelConfig, from_dict
    from alignlab.models.load import load_model

    folder = Path(folder).expanduser()
    layout = reward_layout(folder)
    if layout is None:
        raise ModelLoadError(
            f"{folder}: not a reward model folder (neither {HEAD_FILE} nor a config.json whose architectures "
            "name a ...ForSequenceClassification); give a reward run's final/ folder"
        )
    if layout == "hf":
        return _load_hf_layout(folder, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
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


def _load_hf_layout(folder: Path, *, device: str, dtype: str, trust_remote_code: bool) -> LoadedReward:
    """A sequence-classification folder as a :class:`RewardModel`: its trunk, and its head copied
    into alignlab's float32 head (bias: the ensemble's ``head_offsets``, else 0)."""
    from alignlab.models.load import load_classifier

    loaded = load_classifier(str(folder), device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    model = loaded.model
    meta = dict(getattr(model.config, CONFIG_KEY, None) or {})  # empty for a folder from another tool
    try:
        head = _classifier_head(model, folder)
    except _NoClassifier as e:
        raise ModelLoadError(str(e)) from None
    K = head.out_features
    offsets = meta.get("head_offsets") or [0.0] * K
    if len(offsets) != K:
        raise ModelLoadError(
            f"{folder}/config.json: {CONFIG_KEY}.head_offsets has {len(offsets)} values for {K} labels"
        )
    rm = RewardModel(model, shift=meta.get("shift", 0.0), scale=meta.get("scale", 1.0), heads=K)
    with torch.no_grad():
        rm.head.weight.copy_(head.weight.float())
        bias = head.bias.float() if head.bias is not None else torch.tensor(offsets, dtype=torch.float32)
        rm.head.bias.copy_(bias.to(rm.head.bias.device))
    rm.eval()
    return LoadedReward(rm, loaded.tokenizer, meta)


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
