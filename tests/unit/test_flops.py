"""Token and FLOPs counts: 2N per forward token, 4N + 2N·f per trained token, real tokens only."""

import pytest
import torch

from alignlab.config import ModelConfig, from_dict
from alignlab.models import flops
from alignlab.models.load import load_model


def _tiny(**model):
    return load_model(from_dict(ModelConfig, {"name_or_path": "tiny", **model}), seed=0)


def test_forward_and_trained_tokens_and_flops_by_hand():
    loaded = _tiny()
    model = loaded.model
    n = flops.non_embedding_parameters(model)
    emb = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert n == (total if tied else total - emb)
    ids = torch.randint(3, 200, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])  # one left pad: 9 real tokens
    start = flops.snapshot()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    got = flops.since(start)
    assert got == {"forward_tokens": 9, "trained_tokens": 0, "flops": 9 * 2 * n}
    start = flops.snapshot()
    model(input_ids=ids).logits.sum().backward()  # no mask: every position; full fine-tuning: f = 1
    got = flops.since(start)
    assert got["trained_tokens"] == 10 and got["forward_tokens"] == 0
    assert got["flops"] == pytest.approx(10 * 6 * n)


def test_lora_training_counts_little_weight_gradient_work_and_tracking_is_idempotent():
    model = _tiny(lora={"enabled": True}).model
    base = model.get_base_model()
    n = flops.non_embedding_parameters(base)
    f = sum(p.numel() for p in base.parameters() if p.requires_grad) / n
    assert 0 < f < 0.5  # the tiny model is small next to its adapters; SmolLM2 with r=16 trains ~3%
    flops.track(model)  # a second track adds no second hook
    start = flops.snapshot()
    model(input_ids=torch.randint(3, 200, (1, 4))).logits.sum().backward()
    got = flops.since(start)
    assert got["trained_tokens"] == 4
    assert got["flops"] == pytest.approx(4 * (4 * n + 2 * n * f))


def test_a_decoding_step_counts_only_its_new_tokens():
    """generate passes the whole context's mask with one new token per row: that is 2 tokens, not 2 × 7."""
    loaded = _tiny()
    model = loaded.model.eval()
    ids = torch.randint(3, 200, (2, 6))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        start = flops.snapshot()
        model(
            input_ids=ids[:, -1:],
            attention_mask=torch.ones(2, 7, dtype=torch.long),
            past_key_values=out.past_key_values,
        )
    assert flops.since(start)["forward_tokens"] == 2
