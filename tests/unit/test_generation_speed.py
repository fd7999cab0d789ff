"""Sampling speed helpers: the compute-limit fraction by hand, packed linear layers equal to F.linear."""

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.models.flops import non_embedding_parameters
from alignlab.models.load import load_model
from alignlab.rollout import throughput
from alignlab.rollout.generate import SamplingParams, TransformersEngine
from alignlab.rollout.packing import packed_linears, packing_available


def _tiny(**model):
    return load_model(from_dict(ModelConfig, {"name_or_path": "tiny", **model}), seed=0, for_training=False)


def test_compute_limit_fraction_by_hand():
    model = _tiny().model
    n = non_embedding_parameters(model)
    assert throughput.flops_per_token(model) == 2 * n
    # 50 GFLOP/s over 2N FLOP per token, and 1000 tokens/s against it
    limit = 50e9 / (2 * n)
    assert throughput.compute_limit_tokens_per_s(model, gflops=50.0) == pytest.approx(limit)
    assert throughput.compute_limit_fraction(1000.0, model, gflops=50.0) == pytest.approx(1000.0 / limit)


def test_lora_weights_are_not_counted_they_are_folded_in_while_sampling():
    base, lora = _tiny().model, _tiny(lora={"enabled": True}).model
    assert sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n) > 0
    assert throughput.sampling_parameters(lora) == throughput.sampling_parameters(base)


def test_matmul_rate_is_measured_once_and_is_a_rate():
    throughput.matmul_gflops.cache_clear()
    rate = throughput.matmul_gflops("cpu", 256, 2)
    assert 0.01 < rate < 1e6
    assert throughput.matmul_gflops("cpu", 256, 2) == rate  # cached: one measurement per process


@pytest.mark.skipif(not packing_available(torch.nn.Linear(2, 2)), reason="torch built without oneDNN")
def test_packed_linears_compute_f_linear_and_put_the_layers_back(monkeypatch):
    model = _tiny().model.eval()
    ids = torch.randint(3, 259, (3, 7))
    plain_calls = []
    real_linear = torch.nn.functional.linear
    with torch.no_grad():
        want = model(input_ids=ids).logits
        monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: plain_calls.append(1) or real_linear(*a))
        with packed_linears(model, batch_size=21):
            linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
            assert linears and all("forward" in vars(m) for m in linears)
            got = model(input_ids=ids).logits  # 21 rows: the packed product
            one_row = model(input_ids=ids[:1]).logits  # fewer rows than the packing was tuned for
            assert plain_calls == []
            more = model(input_ids=ids[:, :6]).logits  # 18 rows
        with packed_linears(model, batch_size=4):
            prefill = model(input_ids=ids).logits  # more rows than a decoding step: F.linear
            assert len(plain_calls) == len(linears)
    assert (got - want).abs().max() < 1e-4
    assert (one_row - want[:1]).abs().max() < 1e-4
    assert (more - want[:, :6]).abs().max() < 1e-4
    assert (prefill - want).abs().max() < 1e-4
    assert not any("forward" in vars(m) for m in model.modules())
    with packed_linears(model, batch_size=2):  # no backward through the packed op
        with pytest.raises(RuntimeError, match="sampling only"):
            model(inputs_embeds=torch.randn(1, 3, model.config.hidden_size, requires_grad=True))
    half = _tiny().model.bfloat16()  # a bfloat16 sampling copy packs at a decoding step's rows up to 256
    assert packing_available(half, 256) and not packing_available(half, 257)
    double = _tiny().model.double()
    assert not packing_available(double)
    with packed_linears(double, batch_size=2):
        assert not any("forward" in vars(m) for m in double.modules())


def test_packed_engine_samples_the_same_tokens():
    loaded = _tiny(lora={"enabled": True})
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=4, logprobs=True)
    fast = TransformersEngine(loaded.model, loaded.tokenizer, batch_size=2).generate(prompts, params)
    plain = TransformersEngine(loaded.model, loaded.tokenizer, batch_size=2, packed=False).generate(prompts, params)
    assert [g.response_ids for g in fast] == [g.response_ids for g in plain]
    for f, p in zip(fast, plain):
        assert f.logprobs == pytest.approx(p.logprobs, abs=1e-4)


def test_measuring_the_matmul_rate_leaves_the_global_rng_alone():
    """A resumed run measures the rate at another step than the straight run: it must not move the
    stream the rollouts sample from (exact resume)."""
    import torch

    from alignlab.rollout.throughput import matmul_gflops

    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert matmul_gflops("cpu", size=64, repeats=1) > 0
    assert torch.equal(torch.get_rng_state(), before)
