"""AdamW's moments in one block and glibc's heap settings: the same training, less resident heap."""

from __future__ import annotations

import copy

import pytest
import torch

from alignlab.trainers import host_memory


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3, bias=False))


def _steps(model, opt, n, start=0):
    for k in range(start, start + n):
        g = torch.Generator().manual_seed(k)
        x, y = torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("fused", [True, False])
def test_moments_in_one_block_train_exactly_like_adams_own(fused):
    a, b = _model(), _model()
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    assert host_memory.place_adam_moments(ob)
    blocks = {ob.state[p][k].untyped_storage().data_ptr() for p in b.parameters() for k in ("exp_avg", "exp_avg_sq")}
    assert len(blocks) == 1  # every moment is a view of one block
    _steps(a, oa, 5)
    _steps(b, ob, 5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa.state[p][k], ob.state[q][k], rtol=0, atol=0)


def test_a_resumed_state_is_copied_into_the_block_and_continues_exactly():
    a = _model()
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True)
    _steps(a, oa, 3)
    b = copy.deepcopy(a)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # what a checkpoint's resume does
    assert host_memory.place_adam_moments(ob)
    assert float(ob.state[next(b.parameters())]["step"]) == 3
    _steps(a, oa, 3, start=3)
    _steps(b, ob, 3, start=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # the block round-trips through a state dict like per-tensor moments
    oc = torch.optim.AdamW(_model().parameters(), lr=1e-2, fused=True)
    oc.load_state_dict(ob.state_dict())
    for k, v in ob.state_dict()["state"].items():
        torch.testing.assert_close(oc.state_dict()["state"][k]["exp_avg_sq"], v["exp_avg_sq"], rtol=0, atol=0)


def test_other_optimizers_and_amsgrad_are_left_alone():
    m = _model()
    sgd = torch.optim.SGD(m.parameters(), lr=0.1)
    ams = torch.optim.AdamW(m.parameters(), lr=0.1, amsgrad=True)
    assert not host_memory.place_adam_moments(sgd) and not host_memory.place_adam_moments(ams)
    assert len(ams.state) == 0


def _rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_free_heap_pages_go_back_to_the_system():
    if host_memory._libc() is None:
        pytest.skip("not glibc: both calls are no-ops")
    assert host_memory.fix_mmap_threshold()
    # 1 MiB tensors (under the threshold: heap chunks), touched; all but the last freed, which pins
    # the heap's top so that only a trim inside the heap can give the pages back
    chunks = [torch.ones(1 << 18) for _ in range(128)]
    keep = chunks[-1]
    del chunks
    before = _rss_mib()
    assert host_memory.release_free_heap()
    assert before - _rss_mib() > 64  # most of the 127 MiB freed
    assert keep.sum() == 1 << 18


class _FakeLibc:
    """Records the glibc calls host_memory makes."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_heap_kept_lifts_the_trim_threshold_for_the_block_and_trims_after(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(host_memory, "_libc", lambda: fake)
    monkeypatch.setattr(host_memory, "_fixed", False)
    with host_memory.heap_kept():
        pass
    assert fake.calls == []  # glibc still adjusts its thresholds itself: leave them alone

    assert host_memory.fix_mmap_threshold()
    assert fake.calls == [("mallopt", -3, host_memory.MMAP_THRESHOLD), ("mallopt", -1, host_memory.TRIM_THRESHOLD)]
    fake.calls.clear()
    with pytest.raises(RuntimeError), host_memory.heap_kept():
        assert fake.calls == [("mallopt", -1, host_memory.KEPT_HEAP)]
        raise RuntimeError("a sampling call failed")
    assert fake.calls[1:] == [("mallopt", -1, host_memory.TRIM_THRESHOLD), ("malloc_trim", 0)]


def test_inside_heap_kept_freed_memory_stays_mapped_until_the_block_ends():
    if host_memory._libc() is None:
        pytest.skip("not glibc")
    assert host_memory.fix_mmap_threshold()
    with host_memory.heap_kept():
        # 32 MiB of 1 MiB heap chunks: under KEPT_HEAP, past which glibc would trim the whole top
        chunks = [torch.ones(1 << 18) for _ in range(32)]
        before = _rss_mib()
        del chunks
        kept = before - _rss_mib()
    after = before - _rss_mib()
    assert kept < 8 and after > 24, (kept, after)
