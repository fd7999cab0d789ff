"""train.strategy=zero2/zero3 without deepspeed, and the DeepSpeed config alignlab hands it (no process group)."""

import sys

import pytest

from alignlab import distributed
from alignlab.deepspeed_strategy import engine_config, require
from alignlab.errors import ConfigError


def test_zero_names_are_strategies():
    for name in ("zero2", "zero3"):
        distributed.check_strategy(name)
    with pytest.raises(ConfigError, match="zero2"):
        distributed.check_strategy("zero1")


def test_missing_deepspeed_is_a_one_line_config_error(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now raises ImportError
    with pytest.raises(ConfigError) as err:
        require()
    assert "pip install 'alignlab[deepspeed]'" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("stage", [2, 3])
def test_engine_config_keeps_the_loops_clipping_and_weights(monkeypatch, stage):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = engine_config(stage, 0.5)
    assert cfg["gradient_clipping"] == 0.5  # train.max_grad_norm, not DeepSpeed's default
    assert cfg["managed_gradient_accumulation"] is False and cfg["gradient_accumulation_steps"] == 1
    assert cfg["train_batch_size"] == 2 and cfg["zero_optimization"]["stage"] == stage
    if stage == 3:  # every parameter partitioned, however small
        assert cfg["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert engine_config(stage, 0.0)["gradient_clipping"] == 0.0  # 0: no clipping, as in the loop
