"""Chunked, masked log-probs equal the plain full-logits computation, values and gradients."""
import pytest
import torch

from alignlab.models.logprobs import token_logprobs
from alignlab.models.presets import build_tiny


def naive(model, ids):
    logits = model(input_ids=ids).logits[:, :-1].float()  # (B, T-1, V)
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1024, 5])  # one chunk (direct) and many (checkpointed)
def test_masked_chunked_logprobs_match_full_logits_and_gradients(chunk_size):
    model, _ = build_tiny(seed=5)
    ids = torch.randint(3, 250, (3, 12))
    mask = torch.zeros(3, 11, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, 2:7] = True
    mask[2, 10] = True

    want = naive(model, ids)
    (want * mask).sum().backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    got = token_logprobs(model, ids, mask=mask, chunk_size=chunk_size)
    assert torch.allclose(got[mask], want[mask], atol=1e-5)
    assert (got[~mask] == 0).all()  # positions no loss reads are never computed
    got.sum().backward()
    for g, w in zip((p.grad for p in model.parameters()), want_grads):
        assert torch.allclose(g, w, atol=1e-5)


def test_temperature_scales_logits():
    model, _ = build_tiny(seed=5)
    ids = torch.randint(3, 250, (2, 6))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float() / 0.7
        want = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        got = token_logprobs(model, ids, temperature=0.7)
    assert torch.allclose(got, want, atol=1e-5)
