"""VLLMEngine's seams with a fake ``vllm`` module (vLLM itself needs a GPU and is not installed here).

The fake ``vllm.LLM`` loads the folder the engine saved into a plain transformers model and applies
``load_weights`` by name, as vLLM's model does, so the tests can check what vLLM would sample
from: after every policy update and ``sync_weights()``, the LoRA policy's merged weights under
plain Hugging Face names.
"""

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.models.load import load_model


class FakeVLLMModel:
    """vLLM's model as the engine sees it: ``load_weights(iterable of (name, tensor))``."""

    def __init__(self, folder):
        from transformers import AutoModelForCausalLM

        self.hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        weights = dict(weights)
        known = self.hf.state_dict()
        unknown = [k for k in weights if k not in known]
        assert not unknown, f"names vLLM would not know: {unknown[:3]}"
        with torch.no_grad():
            for name, value in weights.items():
                known[name].copy_(value)
        self.loads.append(weights)


def fake_vllm(new_layout: bool):
    """A ``vllm`` module: ``LLM`` (old layout: model reachable through the executor; new: ``apply_model``)."""
    mod = types.ModuleType("vllm")
    mod.created = []

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        def __init__(self, model, tokenizer, **kwargs):
            self.folder, self.kwargs = model, kwargs
            self.model = FakeVLLMModel(model)
            self.resets = 0
            self.calls = []
            if not new_layout:
                runner = SimpleNamespace(model=self.model)
                self.llm_engine = SimpleNamespace(
                    model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
                )
            else:
                self.llm_engine = SimpleNamespace()
            mod.created.append(self)

        def apply_model(self, fn):
            if not new_layout:
                raise AssertionError("the old layout is reached through the executor")
            return [fn(self.model)]

        def reset_prefix_cache(self):
            self.resets += 1

        def generate(self, inputs, sp, use_tqdm=False):
            self.calls.append((inputs, sp))
            outs = []
            for i in range(len(inputs)):  # response i: tokens [10 + i, 11 + i], then a stop on EOS for even i
                toks = [10 + i, 11 + i]
                reason = "stop" if i % 2 == 0 else "length"
                stop = sp.kwargs["stop_token_ids"][0] if reason == "stop" else None
                outs.append(
                    SimpleNamespace(outputs=[SimpleNamespace(token_ids=toks, finish_reason=reason, stop_reason=stop)])
                )
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def lora_policy():
    policy = load_model(from_dict(ModelConfig, {"name_or_path": "tiny", "lora": {"enabled": True}}), seed=0)
    policy.model.eval()  # LoRA dropout off
    return policy


def an_update(model, scale: float) -> None:
    """What an optimizer step does to a LoRA policy: the adapter weights change (B leaves 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * scale)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("new_layout", [False, True], ids=["executor-layout", "apply_model"])
def test_sync_weights_hands_vllm_the_merged_policy_after_each_update(monkeypatch, new_layout):
    from alignlab.rollout.vllm_engine import VLLMEngine

    vllm = fake_vllm(new_layout)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    policy = lora_policy()
    engine = VLLMEngine(policy.model, policy.tokenizer, seed=3)
    llm = vllm.created[0]
    assert llm.kwargs["seed"] == 3 and llm.kwargs["enable_prefix_caching"] is False
    ids = torch.randint(3, 259, (2, 9))
    # the folder vLLM starts from is the policy as loaded (B = 0: the merged weights are the base's)
    assert (logits(llm.model.hf, ids) - logits(policy.model, ids)).abs().max() < 1e-5
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    for step, scale in enumerate((0.5, 0.2)):
        stale = logits(llm.model.hf, ids)
        an_update(policy.model, scale)
        want = logits(policy.model, ids)
        assert (want - stale).abs().max() > 1e-2  # the update matters: a missed sync would be seen
        before = {k: v.clone() for k, v in policy.model.state_dict().items()}
        engine.sync_weights()
        sent = llm.model.loads[-1]
        assert len(llm.model.loads) == step + 1 and llm.resets == step + 1
        assert not any("lora_" in k or "base_layer" in k or k.startswith("base_model.") for k in sent)
        adapted = [n for n, m in policy.model.get_base_model().named_modules() if hasattr(m, "lora_A")]
        assert adapted and all(f"{n}.weight" in sent for n in adapted)
        layer = policy.model.get_base_model().get_submodule(adapted[0])
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        w = layer.base_layer.weight + layer.scaling["default"] * b @ a  # W + s·B·A, by hand
        assert torch.allclose(sent[f"{adapted[0]}.weight"], w, atol=1e-6)
        assert (logits(llm.model.hf, ids) - want).abs().max() < 1e-4  # vLLM's copy samples from π_θ now
        for k, v in policy.model.state_dict().items():  # the training model is not modified by a sync
            assert torch.equal(v, before[k]), k


def test_generate_maps_sampling_params_and_keeps_only_sampled_tokens(monkeypatch):
    from alignlab.rollout.generate import SamplingParams
    from alignlab.rollout.vllm_engine import VLLMEngine

    vllm = fake_vllm(new_layout=True)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    policy = lora_policy()
    engine = VLLMEngine(policy.model, policy.tokenizer)
    eos = policy.tokenizer.eos_token_id
    gens = engine.generate([[5, 6], [7]], SamplingParams(max_new_tokens=7, temperature=0.8, top_p=0.9, seed=11))
    inputs, sp = vllm.created[0].calls[0]
    assert inputs == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}]
    assert sp.kwargs == dict(n=1, temperature=0.8, top_p=0.9, max_tokens=7, seed=11, stop_token_ids=[eos])
    # row 0 stopped on EOS, which vLLM leaves out of token_ids: it comes back; row 1 was cut at the length
    assert [g.response_ids for g in gens] == [[10, 11, eos], [11, 12]]
    assert [g.finished for g in gens] == [True, False]
    assert [g.prompt_ids for g in gens] == [[5, 6], [7]]
    greedy = engine.generate([[5]], SamplingParams(max_new_tokens=3, temperature=0, top_p=0.5))
    assert vllm.created[0].calls[1][1].kwargs["top_p"] == 1.0 and greedy[0].finished


def test_make_engine_builds_the_vllm_engine_when_vllm_and_a_gpu_are_there(monkeypatch):
    from alignlab.rollout import vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(new_layout=True))
    monkeypatch.setattr(vllm_engine, "vllm_installed", lambda: True)
    monkeypatch.setattr(vllm_engine, "gpu_present", lambda: True)
    policy = lora_policy()
    engine = vllm_engine.make_engine("auto", policy.model, policy.tokenizer, gpu_memory_utilization=0.4, seed=5)
    assert isinstance(engine, vllm_engine.VLLMEngine)
    assert engine.llm.kwargs["gpu_memory_utilization"] == 0.4 and engine.llm.kwargs["seed"] == 5
