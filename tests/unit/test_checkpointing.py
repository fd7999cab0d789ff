"""Activation checkpointing: the same gradients in every mode, and the memory each mode keeps."""

import contextlib

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from alignlab.config import DPOConfig, LoraConfig, load_config
from alignlab.errors import ConfigError
from alignlab.models.checkpointing import enable_checkpointing, resolve_mode
from alignlab.models.dropout import use_gap_dropout
from alignlab.models.load import apply_lora
from alignlab.models.logprobs import token_logprobs
from alignlab.models.presets import build_tiny

SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=3)


class CountProducts(TorchDispatchMode):
    """Matrix products that really run (a product selective checkpointing serves from its cache does not)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
        return func(*args, **(kwargs or {}))


def grads_and_kept_bytes(mode: str, *, lora: bool = False, gap: bool = False, adapters: bool | None = None, count=None):
    """Gradients of a summed log-prob and the bytes still allocated once the forward pass is done."""
    model, _ = build_tiny(seed=1, **SHAPE)
    assert enable_checkpointing(model, mode, adapters=lora if adapters is None else adapters) == (mode != "none")
    if lora:
        torch.manual_seed(3)  # the adapters' initial weights
        model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.3))
        if gap:
            assert use_gap_dropout(model) > 0
    model.train()
    ids = torch.randint(3, 250, (3, 40), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)  # dropout masks: the same stream in every mode
    with contextlib.ExitStack() as stack:
        if count is not None:
            stack.enter_context(count)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            lp = token_logprobs(model, ids)
        kept = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_parent is None)  # net allocations of the forward
        lp.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return grads, kept


@pytest.mark.parametrize("lora,gap", [(False, False), (True, False), (True, True)])
def test_every_mode_gives_the_same_gradients(lora, gap):
    """With LoRA dropout (torch's or alignlab's gap dropout) the recomputation replays the RNG."""
    want, _ = grads_and_kept_bytes("none", lora=lora, gap=gap)
    for mode in ("selective", "full"):
        got, _ = grads_and_kept_bytes(mode, lora=lora, gap=gap)
        assert got.keys() == want.keys()
        for name in want:
            assert torch.allclose(got[name], want[name], atol=1e-6, rtol=1e-5), (mode, name)


def test_selective_keeps_well_under_the_plain_activations_and_full_keeps_least():
    _, none = grads_and_kept_bytes("none")
    _, selective = grads_and_kept_bytes("selective")
    _, full = grads_and_kept_bytes("full")
    # selective drops the element-wise intermediates (norm products, RoPE, SiLU, gate*up): measured 0.6x here
    assert selective < 0.7 * none
    assert full < 0.5 * selective


@pytest.mark.parametrize("lora", [False, True])
def test_selective_runs_no_product_twice_and_drops_the_down_projection(lora):
    counts = {}
    for mode in ("none", "selective", "full"):
        counts[mode] = CountProducts()
        grads_and_kept_bytes(mode, lora=lora, count=counts[mode])
    assert counts["full"].n > counts["none"].n  # full reruns them: the counter sees recomputation
    if lora:  # dropping the base down projection under LoRA would rerun it (its adapters come after it)
        wrong = CountProducts()
        grads_and_kept_bytes("selective", lora=True, adapters=False, count=wrong)
        assert wrong.n >= counts["selective"].n + SHAPE["num_hidden_layers"]
    else:
        assert counts["selective"].n == counts["none"].n  # every recomputation stops before a product
        _, dropped = grads_and_kept_bytes("selective")
        _, kept_all = grads_and_kept_bytes("selective", adapters=True)  # every product output kept
        down = SHAPE["num_hidden_layers"] * 3 * 40 * SHAPE["hidden_size"] * 4  # layers × tokens × hidden × fp32
        assert 0.9 * down <= kept_all - dropped <= 1.1 * down


def test_unknown_mode_and_yaml_booleans_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="none, selective, full"):
        load_config(DPOConfig, None, ["model.gradient_checkpointing=partial"])
    with pytest.raises(ConfigError, match="must be one of auto, none, selective, full; got 'off'"):  # not YAML's false
        load_config(DPOConfig, None, ["model.gradient_checkpointing=off"])
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model:\n  gradient_checkpointing: off\n")  # in a file YAML reads it as false
    with pytest.raises(ConfigError, match="quote it"):
        load_config(DPOConfig, yaml_file)
    assert load_config(DPOConfig, None, ["model.gradient_checkpointing=full"]).model.gradient_checkpointing == "full"
    # `none` is a mode here, not an empty value (it empties only optional fields)
    assert load_config(DPOConfig, None, ["gradient_checkpointing=none"]).model.gradient_checkpointing == "none"
    assert load_config(DPOConfig, None, ["data.eval=none"]).data.eval is None
    assert load_config(DPOConfig, None, []).model.gradient_checkpointing == "auto"


def test_auto_is_selective_for_full_fine_tuning_and_none_with_lora():
    full = load_config(DPOConfig, None, ["lora.enabled=false"]).model
    lora = load_config(DPOConfig, None, ["lora.enabled=true"]).model
    assert resolve_mode(full) == "selective" and resolve_mode(lora) == "none"
    lora.gradient_checkpointing = "full"  # an explicit mode is kept
    assert resolve_mode(lora) == "full"
