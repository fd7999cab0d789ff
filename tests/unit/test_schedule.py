import math

import pytest

from alignlab.trainers.loop import DataOrder, lr_factor


def test_warmup_then_cosine_and_linear_by_hand():
    # warmup 2 of 10 steps: 1/2, 2/2, then cosine over the remaining 8
    assert lr_factor(0, warmup=2, total=10, kind="cosine") == pytest.approx(0.5)
    assert lr_factor(1, warmup=2, total=10, kind="cosine") == pytest.approx(1.0)
    assert lr_factor(2, warmup=2, total=10, kind="cosine") == pytest.approx(1.0)
    assert lr_factor(6, warmup=2, total=10, kind="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(10, warmup=2, total=10, kind="cosine") == pytest.approx(0.0)
    assert lr_factor(6, warmup=2, total=10, kind="linear") == pytest.approx(0.5)
    assert lr_factor(9, warmup=0, total=10, kind="constant") == 1.0


def test_data_order_is_a_pure_function_of_seed_and_index():
    a, b = DataOrder(10, 4, seed=3), DataOrder(10, 4, seed=3)
    seen = [a.batch(k) for k in range(6)]
    assert [b.batch(k) for k in reversed(range(6))] == list(reversed(seen))
    epoch0 = sorted(i for k in range(3) for i in seen[k])
    assert epoch0 == list(range(10))  # every item once per epoch (last batch partial)
    assert seen[:3] != seen[3:6]  # a new order each epoch
    assert DataOrder(10, 4, seed=4).batch(0) != seen[0] or DataOrder(10, 4, seed=4).batch(1) != seen[1]
