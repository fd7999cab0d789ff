"""A tied input embedding's gradient as rows: the same gradients as the dense path, no (V, H) zeros."""

from __future__ import annotations

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alignlab.models.presets import build_tiny
from alignlab.models.tied_embedding import use_sparse_tied_embedding_grad


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _backward(model, ids, steps=2):
    ops = _Ops()
    for _ in range(steps):  # two backward passes: the second adds into the first's gradient
        loss = model(input_ids=ids, labels=ids).loss
        with ops:
            loss.backward()
    return ops.names


def test_sparse_lookup_gives_the_dense_gradients_without_a_dense_embedding_backward():
    dense, _ = build_tiny(seed=3)
    sparse = copy.deepcopy(dense)
    assert sparse.get_output_embeddings().weight is sparse.get_input_embeddings().weight  # tied
    assert use_sparse_tied_embedding_grad(sparse)
    assert not use_sparse_tied_embedding_grad(sparse)  # once
    ids = torch.randint(3, 250, (3, 13))
    dense_ops, sparse_ops = _backward(dense, ids), _backward(sparse, ids)
    assert any("embedding_dense_backward" in n for n in dense_ops)
    assert not any("embedding_dense_backward" in n for n in sparse_ops)
    for (name, p), q in zip(dense.named_parameters(), sparse.parameters()):
        assert not q.grad.is_sparse, name
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-6, msg=name)


def test_a_sparse_gradient_arriving_first_is_made_dense():
    model, _ = build_tiny(seed=4)
    assert use_sparse_tied_embedding_grad(model)
    emb = model.get_input_embeddings()
    ids = torch.tensor([[5, 7, 5]])
    emb(ids).sum().backward()  # only the lookup: its rows are the whole gradient
    grad = emb.weight.grad
    assert not grad.is_sparse
    want = torch.zeros_like(grad)
    want[5], want[7] = 2.0, 1.0
    torch.testing.assert_close(grad, want)


def test_untied_and_frozen_embeddings_are_left_alone():
    untied, _ = build_tiny(seed=5, tie_word_embeddings=False)
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight
    assert not use_sparse_tied_embedding_grad(untied)
    assert not untied.get_input_embeddings().sparse
    frozen, _ = build_tiny(seed=5)
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not use_sparse_tied_embedding_grad(frozen)
    assert not use_sparse_tied_embedding_grad(torch.nn.Linear(3, 3))
