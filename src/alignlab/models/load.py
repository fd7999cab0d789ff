"""Load a causal LM and its tokenizer from a preset, a local folder, or the local hub cache.

Safety: weights load only from safetensors (or PyTorch files with ``weights_only=True``, which
transformers enforces); ``trust_remote_code`` stays off unless the config turns it on; the hub is
never contacted (``local_files_only=True``): a hub id that is not already cached is an error that
says so.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignlab.errors import ModelLoadError, UnsafeFileError
from alignlab.models import presets
from alignlab.models.checkpointing import enable_checkpointing, resolve_mode


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    source: str  # what was loaded: a folder path or a preset name


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def prepare_tokenizer(tokenizer):
    """Every tokenizer gets a pad token and a chat template (ChatML fallback, documented)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = presets.CHATML_TEMPLATE
    return tokenizer


def _check_folder_is_safe(folder: Path) -> None:
    """Refuse folders whose only weights are pickles (which can execute code when loaded)."""
    safe = list(folder.glob("*.safetensors")) + list(folder.glob("adapter_model.safetensors"))
    pickles = [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if pickles and not safe:
        import torch

        for p in pickles:
            try:
                torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - any failure means we will not load it
                raise UnsafeFileError(
                    f"{p}: refused: this pickle file does not load with weights_only=True "
                    f"({type(e).__name__}), so loading it could run code. Convert the weights to "
                    "safetensors with a tool you trust, then point alignlab at that folder."
                ) from None


@contextmanager
def quiet_hf():
    """Silence transformers' own progress bars and deprecation chatter (alignlab shows its own bar)."""
    import warnings

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _resolve_source(name_or_path: str) -> str:
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise ModelLoadError(f"{p}: not a Hugging Face model folder (no config.json inside)")
        _check_folder_is_safe(p)
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(
            f"{name_or_path}: model folder not found; give an existing folder or a preset ({', '.join(presets.PRESETS)})"
        )
    return name_or_path  # a hub id: only the local cache is consulted below


def load_model(cfg, *, seed: int = 0, for_training: bool = True) -> Loaded:
    """Load the policy described by a :class:`~alignlab.config.ModelConfig` (LoRA applied if enabled)."""

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer = _load_any(cfg.name_or_path, dtype, cfg.trust_remote_code, seed)
    source = cfg.name_or_path
    tokenizer = prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if for_training:
        enable_checkpointing(model, resolve_mode(cfg), adapters=cfg.lora.enabled)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if for_training:
        from alignlab.models.dropout import use_gap_dropout

        use_gap_dropout(model)  # the same dropout in law, drawing only the dropped positions
    model.to(device)
    model.train(for_training)
    from alignlab.models import flops

    flops.track(model)  # tokens and estimated FLOPs into the stage's cost
    return Loaded(model=model, tokenizer=tokenizer, source=source)


def _from_pretrained(folder: str, dtype, trust_remote_code: bool, auto_class: str = "AutoModelForCausalLM"):
    import transformers
    from transformers import AutoTokenizer

    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        with quiet_hf():
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            model = getattr(transformers, auto_class).from_pretrained(
                folder, dtype=dtype, use_safetensors=None, **kwargs
            )
    except OSError as e:
        raise ModelLoadError(
            f"{folder}: cannot load the model ({str(e).splitlines()[0]}). alignlab does not download at "
            f"run time: give a local folder, a preset ({', '.join(presets.PRESETS)}), or a hub id already in the local cache"
        ) from None
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"{folder}: this model needs its own Python code; set model.trust_remote_code=true only if you trust it"
            ) from None
        raise
    return model, tokenizer


def load_classifier(
    name_or_path: str, *, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> Loaded:
    """A sequence-classification model folder (``AutoModelForSequenceClassification``, e.g. an
    exported reward model) and its tokenizer, in eval mode; the same safety rules as :func:`load_model`."""
    dev = resolve_device(device)
    folder = _resolve_source(name_or_path)
    model, tokenizer = _from_pretrained(
        folder, resolve_dtype(dtype, dev), trust_remote_code, "AutoModelForSequenceClassification"
    )
    tokenizer = prepare_tokenizer(tokenizer)
    model.to(dev)
    model.eval()
    from alignlab.models import flops

    flops.track(model)
    return Loaded(model=model, tokenizer=tokenizer, source=name_or_path)


def apply_lora(model, lora_cfg):
    """Wrap ``model`` with peft LoRA adapters on the configured modules."""
    from peft import LoraConfig, get_peft_model

    present = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in lora_cfg.target_modules if t in present]
    if not targets:
        raise ModelLoadError(
            f"lora.target_modules {lora_cfg.target_modules} match no module of this model; "
            f"linear layers here include {sorted(n for n in present if 'proj' in n)[:8]}"
        )
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    with quiet_hf():
        return get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


INFO_FILE = "alignlab_model.json"


def save_pretrained(model, tokenizer, folder: Path, *, base: str | None = None, seed: int = 0) -> None:
    """Hugging Face format with safetensors (peft saves only the adapter), plus what the base was."""
    import json

    folder = Path(folder)
    with quiet_hf():
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    (folder / INFO_FILE).write_text(
        json.dumps({"base": base, "seed": seed, "adapter": is_peft(model)}), encoding="utf-8"
    )


def restore_weights(model, folder: Path, *, pattern: str = "*.safetensors") -> None:
    """Load weights saved by :func:`save_pretrained` into an existing ``model`` (for exact resume).

    ``pattern`` picks the full-weight files (e.g. ``model*.safetensors`` when the folder also
    holds other tensors, such as a reward head).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    state = {}
    for f in sorted(folder.glob(pattern)):
        state.update(load_file(str(f)))
    if not state:
        raise ModelLoadError(f"{folder}: no safetensors weights to restore")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed" in k}
    if unexpected or set(missing) - tied:
        raise ModelLoadError(
            f"{folder}: weights do not match the model (missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})"
        )


def _is_adapter_folder(name: str) -> bool:
    p = Path(name).expanduser()
    return p.is_dir() and (p / "adapter_config.json").is_file()


def _load_any(name: str, dtype, trust_remote_code: bool, seed: int):
    """(model, tokenizer) for a preset, an alignlab LoRA folder (merged into its base), or a HF folder/id."""
    if name == "tiny":
        model, tokenizer = presets.build_tiny(seed=seed)
        return model.to(dtype=dtype), tokenizer
    if _is_adapter_folder(name):
        return _load_adapter_folder(Path(name).expanduser(), dtype, trust_remote_code, seed)
    folder = str(presets.smollm2_dir()) if name == "smollm2-135m" else _resolve_source(name)
    return _from_pretrained(folder, dtype, trust_remote_code)


def _load_adapter_folder(folder: Path, dtype, trust_remote_code: bool, seed: int):
    """An alignlab LoRA checkpoint: its base model with the adapter merged in (a plain model)."""
    import json

    from peft import PeftModel

    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8")) if (folder / INFO_FILE).is_file() else {}
    base_name = info.get("base")
    if not base_name:
        adapter_cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        base_name = adapter_cfg.get("base_model_name_or_path")
    if not base_name:
        raise ModelLoadError(
            f'{folder}: LoRA adapter without a recorded base model; add {INFO_FILE} with {{"base": ...}}'
        )
    model, tokenizer = _load_any(base_name, dtype, trust_remote_code, info.get("seed", seed))
    with quiet_hf():
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return model, tokenizer
