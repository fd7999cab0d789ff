"""Settings may follow a flag: ``alignlab dpo --profile tiny a=1 --num-processes 1 b=2`` keeps both, in order."""

import pytest

import alignlab.cli as cli


class _Stop(Exception):
    pass


def test_settings_after_a_flag_are_kept_in_order(monkeypatch):
    seen = {}

    def build_config(stage, args):
        seen["overrides"] = list(args.overrides)
        raise _Stop

    monkeypatch.setattr(cli, "build_config", build_config)
    with pytest.raises(_Stop):
        cli.main(["dpo", "--profile", "tiny", "train.lr=1", "--num-processes", "1", "train.lr=2", "train.seed=3"])
    assert seen["overrides"] == ["train.lr=1", "train.lr=2", "train.seed=3"]


def test_an_unknown_flag_is_still_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["dpo", "--profile", "tiny", "--no-such-flag"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
