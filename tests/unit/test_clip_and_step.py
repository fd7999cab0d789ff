"""clip_and_step: one norm pass, the same update as torch's clip_grad_norm_ followed by the step."""

import copy

import pytest
import torch

from alignlab.trainers.loop import clip_and_step


def _model_with_grads(scale: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    loss = model(torch.randn(4, 7)).pow(2).sum() * scale
    loss.backward()
    return model


@pytest.mark.parametrize("scale", [100.0, 1e-4])  # the norm far above and far below max_grad_norm
def test_clip_and_step_equals_clip_grad_norm_then_step(scale):
    ours = _model_with_grads(scale)
    theirs = copy.deepcopy(ours)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        b.grad = a.grad.clone()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=0.1)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=0.1)

    expected_norm = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 1.0)
    opt_theirs.step()
    norm, stepped = clip_and_step(list(ours.parameters()), opt_ours, 1.0)

    assert stepped
    assert (float(expected_norm) > 1.0) == (scale > 1)
    assert float(norm) == float(expected_norm)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
        assert a.grad is None  # cleared after the step


def test_clip_and_step_skips_non_finite_gradients():
    model = _model_with_grads(1.0)
    before = [p.detach().clone() for p in model.parameters()]
    next(model.parameters()).grad[0, 0] = float("inf")
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    norm, stepped = clip_and_step(list(model.parameters()), opt, 1.0)
    assert not stepped and not torch.isfinite(norm)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())
