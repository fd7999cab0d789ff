import pytest

from alignlab.config import SFTConfig, config_diff, describe, load_config, parse_overrides
from alignlab.errors import ConfigError


def test_defaults_yaml_and_overrides_compose(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  batch_size: 4\nmodel:\n  lora: {enabled: true}\n")
    cfg = load_config(SFTConfig, f, ["train.batch_size=2", "r=4", "data.train=x.jsonl"])
    assert cfg.train.lr == 0.001
    assert cfg.train.batch_size == 2
    assert cfg.model.lora.enabled is True and cfg.model.lora.r == 4
    assert cfg.data.train == "x.jsonl"
    assert cfg.train.max_steps == 0  # untouched default


def test_unknown_key_names_nearest_valid_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr'.*did you mean 'train.lr'"):
        load_config(SFTConfig, f)
    with pytest.raises(ConfigError, match=r"did you mean 'train.batch_size'"):
        load_config(SFTConfig, None, ["train.batchsize=3"])


def test_wrong_type_and_bad_values_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.lr': expected a number, got 'fast'"):
        load_config(SFTConfig, None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="train.scheduler"):
        load_config(SFTConfig, None, ["train.scheduler=cosinus"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(SFTConfig, ["train.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(SFTConfig, bad)


def test_ambiguous_short_key_is_an_error():
    # 'seed' exists only under train; 'enabled' only under lora: both fine. 'train' is a section.
    assert load_config(SFTConfig, None, ["seed=3"]).train.seed == 3
    with pytest.raises(ConfigError):
        load_config(SFTConfig, None, ["nonsense=1"])


def test_describe_lists_every_leaf_with_help():
    rows = describe(SFTConfig)
    keys = [k for k, _, _ in rows]
    assert "train.lr" in keys and "model.lora.r" in keys
    assert all(h for _, h, _ in rows), "every knob has a help line"


def test_config_diff_names_changed_keys():
    a, b = SFTConfig(), SFTConfig()
    b.train.lr = 1.0
    b.train.progress = False
    assert config_diff(a, b, ignore=("train.progress",)) == ["train.lr"]


def test_partial_yaml_section_keeps_the_stage_defaults(tmp_path):
    """A YAML `data:` section naming one key must not reset the stage's other data defaults."""
    from alignlab.config import DPOConfig, RewardConfig

    f = tmp_path / "c.yaml"
    f.write_text("data:\n  max_length: 400\n")
    dpo = load_config(DPOConfig, f)
    assert dpo.data.max_length == 400 and dpo.data.train == "demo:preferences" and dpo.data.packing is True
    rm = load_config(RewardConfig, f)
    assert rm.data.train == "demo:preferences" and rm.data.packing is False
