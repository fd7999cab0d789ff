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


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1024, 4])
def test_linear_head_backward_matches_autograd_with_bias_and_temperature(temperature, chunk_size):
    """The LM head's lean backward (gradient built in the saved logits' memory) equals autograd's."""
    from alignlab.models.logprobs import selected_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).double()
    hidden = torch.randn(11, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    upstream = torch.randn(11, dtype=torch.float64)  # any weights on the log-probs

    want = torch.log_softmax(head(hidden) / temperature, -1).gather(-1, targets[:, None]).squeeze(-1)
    want_grads = torch.autograd.grad((want * upstream).sum(), [hidden, head.weight, head.bias])

    got = selected_logprobs(head, hidden, targets, temperature=temperature, chunk_size=chunk_size)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), want, atol=1e-6)
    got_grads = torch.autograd.grad((got * upstream.float()).sum(), [hidden, head.weight, head.bias])
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, atol=1e-5)


def test_linear_head_backward_refuses_to_run_twice():
    from alignlab.models.logprobs import selected_logprobs

    head = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.randn(3, 8, requires_grad=True)
    out = selected_logprobs(head, hidden, torch.tensor([1, 2, 3])).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="ran twice"):
        out.backward()


def test_logsumexp_in_row_blocks_equals_torchs():
    from alignlab.models.logprobs import logsumexp_rows

    x = torch.randn(37, 301) * 20
    x[3, :] = float("-inf")  # a fully masked row stays -inf
    x[4, 7] = float("inf")
    want = torch.logsumexp(x, dim=-1)
    for rows in (1, 5, 16, 37, 64):
        torch.testing.assert_close(logsumexp_rows(x, rows=rows), want, rtol=0, atol=0)
