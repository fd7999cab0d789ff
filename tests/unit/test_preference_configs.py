"""RewardConfig and DPOConfig: names validated against the loss registries, options that would be
ignored are errors, and the CLI's --loss is an alias of loss=."""

import pytest
import torch

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


@pytest.mark.parametrize(
    "loss,expected",
    [
        ("dpo", {"beta": 0.1}),
        ("ipo", {"beta": 0.1, "length_normalize": True}),  # the authors' length-averaged form by default
        ("simpo", {"beta": 2.0, "simpo_gamma": 1.0}),  # SimPO's own scale, not DPO's 0.1
        ("cdpo", {"beta": 0.1, "label_smoothing": 0.1}),
        ("rpo", {"beta": 0.1, "rpo_alpha": 1.0}),
    ],
)
def test_each_loss_gets_its_published_defaults_unless_set(loss, expected):
    cfg = load_config(DPOConfig, None, [f"loss={loss}"])
    got = cfg.hyperparameters()
    assert {k: got[k] for k in expected} == expected
    assert load_config(DPOConfig, None, [f"loss={loss}", "beta=0.5"]).hyperparameters()["beta"] == 0.5
    assert (
        load_config(DPOConfig, None, ["loss=ipo", "length_normalize=false"]).hyperparameters()["length_normalize"]
        is False
    )


def test_help_shows_each_losss_published_defaults(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["dpo", "--help"])
    out = capsys.readouterr().out
    assert "simpo: beta=2.0, simpo_gamma=1.0" in out and "ipo: beta=0.1, length_normalize=True" in out


def test_dpo_turns_the_policys_dropout_off_by_default(tmp_path, monkeypatch):
    import alignlab.models.policy as policy
    from alignlab.profiles import load_profile
    from alignlab.trainers.dpo import train_dpo

    calls = []
    real = policy.disable_dropout
    monkeypatch.setattr(policy, "disable_dropout", lambda m: (calls.append(m), real(m)))
    base = load_profile("tiny")["dpo"]
    args = [
        f"train.output_dir={tmp_path}",
        "train.max_steps=1",
        "train.progress=false",
        "train.num_samples=0",
        "model.lora.enabled=true",
        "model.lora.dropout=0.5",
    ]
    train_dpo(load_config(DPOConfig, None, args, base=base))
    assert len(calls) == 1
    drops = [m.p for m in calls[0].modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.0 for p in drops)  # LoRA's dropout 0.5 is off in the policy pass
    calls.clear()
    train_dpo(load_config(DPOConfig, None, [*args, "train.run_name=on", "dropout=true"], base=base))
    assert calls == []
