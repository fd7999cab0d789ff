"""Where the RL stages' networks go (models.placement): the auto table, same, explicit role=device
pairs, one-line errors; build_models moves the frozen reference and a separate value trunk there."""

import pytest

from alignlab.config import from_dict
from alignlab.config.sections import ModelConfig
from alignlab.errors import ConfigError
from alignlab.models.placement import plan
from alignlab.models.policy import build_models


@pytest.mark.parametrize(
    "gpus, processes, want",
    [
        (0, 1, ("cpu", "cpu", "cpu", "cpu")),
        (1, 1, ("cuda", "cuda", "cuda", "cuda")),
        (2, 1, ("cuda:0", "cuda:1", "cuda:1", "cuda:0")),  # the value trunk trains: with the policy
        (4, 1, ("cuda:0", "cuda:1", "cuda:1", "cuda:2")),
        (4, 4, ("cuda", "cuda", "cuda", "cuda")),  # one device per process: everything on it
    ],
)
def test_auto(gpus, processes, want):
    device = "cuda" if gpus else "cpu"
    got = plan("auto", policy_device=device, gpus=gpus, processes=processes)
    assert (got["policy"], got["reference"], got["reward"], got["value"]) == want


def test_same_and_explicit():
    assert set(plan("same", policy_device="cuda", gpus=4).values()) == {"cuda"}
    got = plan("reference=cuda:1, reward=cpu", policy_device="cuda:0", gpus=2)
    assert got == {"policy": "cuda:0", "reference": "cuda:1", "reward": "cpu", "value": "cuda:0"}


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("refrence=cpu", "not role=device"),
        ("reference", "not role=device"),
        ("reference=cuda:3", "has 2 CUDA device"),
        ("reward=tpu:0", "not cpu or cuda:N"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        plan(spec, policy_device="cuda:0", gpus=2)


def test_build_models_puts_the_frozen_copy_and_the_value_trunk_where_asked():
    cfg = from_dict(ModelConfig, {"name_or_path": "tiny"})
    models = build_models(cfg, seed=0, value="separate", devices={"reference": "meta", "value": "meta"})
    assert next(models.ref_model.parameters()).device.type == "meta"
    assert next(models.value_model.parameters()).device.type == "meta"
    assert next(models.model.parameters()).device.type == "cpu"  # the policy and its value head stay
    assert next(models.value_head.parameters()).device.type == "cpu"
