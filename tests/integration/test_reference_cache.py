"""Reference log-probs: the cached numbers are the live ones, a second call reads the cache, the
key changes with what the numbers depend on, and LoRA's reference is the adapter-free network."""

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.data import load_records
from alignlab.models.load import load_model
from alignlab.trainers import reference
from alignlab.trainers.dpo import PairSet, UnpairedSet


def _setup(preference_file, *, lora=False, max_length=64, seed=0):
    # float32 everywhere (also on a GPU, where auto would be bf16): the comparisons below are numeric
    cfg = from_dict(ModelConfig, {"name_or_path": "tiny", "dtype": "float32", "lora": {"enabled": lora}})
    loaded = load_model(cfg, seed=seed)
    pairs = PairSet(load_records(str(preference_file), "preference").records, loaded.tokenizer, max_length, 32)
    return cfg, loaded.model, pairs


def _get(model, cfg, pairs, seed=0, max_length=64, **kw):
    return reference.reference_logps(
        model,
        identity=reference.model_identity(cfg, seed, model),
        fingerprint=pairs.fingerprint(),
        settings={"max_length": max_length, "max_prompt_length": 32},
        n_items=len(pairs),
        make_batch=pairs.batch,
        names=pairs.names,
        batch_size=5,
        progress=False,
        **kw,
    )


def _one_by_one(model, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """Each response alone (no padding, no batching): the live value to compare with."""
    with torch.no_grad():
        model.eval()
        rows = [reference.seq_logps(model, pairs.batch([i])) for i in range(len(pairs))]  # each (2,)
    out = torch.stack(rows).cpu()  # (N, 2), where the cache keeps them
    return out[:, 0], out[:, 1]


def test_cached_equals_live_and_second_call_hits(preference_file, alignlab_cache, monkeypatch):
    cfg, model, pairs = _setup(preference_file)
    calls = []
    real = reference.compute_reference_logps
    monkeypatch.setattr(reference, "compute_reference_logps", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = _get(model, cfg, pairs)
    assert not first.hit and first.path.is_file() and first.path.parent == alignlab_cache / "reflogps"
    assert len(calls) == 1
    chosen, rejected = _one_by_one(model, pairs)
    torch.testing.assert_close(first.tensors["chosen"], chosen, atol=1e-4, rtol=0)  # sums of ~10 log-probs ~ -70
    torch.testing.assert_close(first.tensors["rejected"], rejected, atol=1e-4, rtol=0)

    second = _get(model, cfg, pairs)
    assert second.hit and len(calls) == 1  # no forward pass
    for name in pairs.names:
        assert torch.equal(first.tensors[name], second.tensors[name])  # bit-for-bit
    assert not list(first.path.parent.glob(".*.tmp"))  # no temporary file left behind


def test_key_follows_model_data_and_truncation(preference_file, alignlab_cache):
    cfg, model, pairs = _setup(preference_file)
    base = _get(model, cfg, pairs).path
    cfg1, model1, pairs1 = _setup(preference_file, seed=1)
    assert _get(model1, cfg1, pairs1, seed=1).path != base  # another reference model
    _, _, short = _setup(preference_file, max_length=40)
    assert _get(model, cfg, short, max_length=40).path != base  # other truncation, other tokens
    assert _get(model, cfg, pairs).path == base


def test_lora_reference_is_the_network_with_adapters_off(preference_file, alignlab_cache):
    cfg, model, pairs = _setup(preference_file, lora=True)
    with torch.no_grad():  # move the adapters away from their zero start, as training would
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.train()
    ref = _get(model, cfg, pairs)
    assert model.training  # reference_mode restores the mode it found
    _, plain, _ = _setup(preference_file)  # the same tiny weights without LoRA
    chosen, rejected = _one_by_one(plain, pairs)
    torch.testing.assert_close(ref.tensors["chosen"], chosen, atol=1e-4, rtol=0)
    adapted, _ = _one_by_one(model, pairs)
    assert (adapted - chosen).abs().max() > 1e-2  # the adapter does change the log-probs


def test_unpaired_mismatched_rows_pair_other_prompts(preference_file, alignlab_cache):
    loaded = load_model(from_dict(ModelConfig, {"name_or_path": "tiny"}))
    data = UnpairedSet(load_records(str(preference_file), "unpaired").records, loaded.tokenizer, 64, 32, seed=0)
    assert len(data) == 48  # each preference row gives a desirable and an undesirable example
    for i, (ex, mm) in enumerate(zip(data.examples, data.mismatched)):
        j = data.partners[i]
        assert data.examples[j].prompt_ids != ex.prompt_ids  # another prompt's response
        assert mm.prompt_ids == ex.prompt_ids and mm.response_ids == data.examples[j].response_ids
    batch = data.batch([0, 1, 2])
    assert batch["input_ids"].shape[0] == 6 and batch["desirable"].tolist() == [True, False, True]


@pytest.mark.parametrize("bad", [b"", b"not safetensors"])
def test_a_damaged_cache_file_is_recomputed(preference_file, alignlab_cache, bad):
    cfg, model, pairs = _setup(preference_file)
    good = _get(model, cfg, pairs)
    good.path.write_bytes(bad)
    again = _get(model, cfg, pairs)
    assert not again.hit and torch.equal(again.tensors["chosen"], good.tensors["chosen"])
