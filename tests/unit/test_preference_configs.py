"""RewardConfig and DPOConfig: names validated against the loss registries, options that would be
ignored are errors, and the CLI's --loss is an alias of loss=."""
import pytest

from alignlab.cli import build_config, make_parser
from alignlab.config import DPOConfig, RewardConfig, load_config
from alignlab.errors import ConfigError


def test_unknown_loss_names_the_key_and_the_closest_name():
    with pytest.raises(ConfigError, match=r"'loss'.*'sipmo'.*did you mean 'simpo'"):
        load_config(DPOConfig, None, ["loss=sipmo"])
    with pytest.raises(ConfigError, match=r"'loss'.*did you mean 'plackett_luce'"):
        load_config(RewardConfig, None, ["loss=plackett"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss=dpo", "label_smoothing=0.1"], "label_smoothing"),
        (["loss=kto", "data_kind=ranking"], "data_kind"),
        (["loss=ipo", "data_kind=unpaired"], "data_kind"),
        (["loss=simpo", "length_normalize=true"], "length_normalize"),
        (["beta=0"], "beta"),
    ],
)
def test_dpo_options_that_would_be_ignored_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DPOConfig, None, overrides)


def test_dpo_packs_by_default_and_reward_refuses_packing():
    assert load_config(DPOConfig, None, []).data.packing is True
    with pytest.raises(ConfigError, match="packing"):
        load_config(RewardConfig, None, ["data.packing=true"])


def test_reward_options():
    with pytest.raises(ConfigError, match="margin"):
        load_config(RewardConfig, None, ["loss=kwise", "margin=1.0"])
    with pytest.raises(ConfigError, match="data_kind"):
        load_config(RewardConfig, None, ["data_kind=unpaired"])
    cfg = load_config(RewardConfig, None, ["margin=0.5"])
    assert cfg.data.train == "demo:preferences" and cfg.norm_prompts == "demo:prompts"


def test_cli_loss_flag_is_an_alias_and_key_value_wins():
    parser = make_parser()
    cfg = build_config("dpo", parser.parse_args(["dpo", "--profile", "tiny", "--loss", "ipo"]))
    assert cfg.loss == "ipo" and cfg.model.name_or_path == "tiny"
    cfg = build_config("dpo", parser.parse_args(["dpo", "--loss", "ipo", "loss=hinge"]))
    assert cfg.loss == "hinge"
    cfg = build_config("reward", parser.parse_args(["reward", "--profile", "tiny", "--loss", "kwise"]))
    assert cfg.loss == "kwise"


@pytest.mark.parametrize("profile", ["tiny", "default"])
def test_profiles_have_reward_and_dpo_sections(profile):
    from alignlab.cli import profile_section

    assert load_config(RewardConfig, None, [], base=profile_section(profile, "reward")).data.train == "demo:preferences"
    assert load_config(DPOConfig, None, [], base=profile_section(profile, "dpo")).loss == "dpo"
