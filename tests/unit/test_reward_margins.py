"""Per-pair margins from the data (Llama 2's preference strength) and the centring regulariser, as wired by the reward stage."""

import json

import pytest
import torch

from alignlab.config import RewardConfig, load_config
from alignlab.data import load_records
from alignlab.errors import ConfigError, DataError
from alignlab.trainers.reward import pair_loss, pair_margins


def test_preference_rows_carry_their_margin_and_a_bad_one_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2})
        + "\n"
        + json.dumps({"prompt": "q", "chosen": "c", "rejected": "d"})
        + "\n"
    )
    recs = load_records(str(path), "preference").records
    assert [r.margin for r in recs] == [2.0, None]
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "high"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1.*margin"):
        load_records(str(path), "preference")


def test_margin_from_data_uses_each_pairs_margin_and_falls_back_to_the_constant():
    cfg = load_config(RewardConfig, None, ["margin=0.5", "margin_from_data=true"])
    data = torch.tensor([2.0, float("nan")])
    assert pair_margins(cfg, data, torch.zeros(2)).tolist() == [2.0, 0.5]
    # the BT loss with per-pair margins, by hand: -log σ(Δ - m)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])  # chosen (1, 0), rejected (0, 0)
    loss, _ = pair_loss(cfg, rewards, 2, data)
    want = (
        -torch.nn.functional.logsigmoid(torch.tensor(1.0 - 2.0))
        - torch.nn.functional.logsigmoid(torch.tensor(0.0 - 0.5))
    ) / 2
    assert float(loss) == pytest.approx(float(want))
    off = load_config(RewardConfig, None, ["margin=0.5"])
    assert pair_margins(off, data, torch.zeros(2)) == 0.5  # the data's margins are ignored unless asked for


def test_center_rewards_adds_the_pair_centring_term():
    cfg = load_config(RewardConfig, None, ["center_rewards=0.01"])
    rewards = torch.tensor([3.0, 1.0, 1.0, -1.0])  # pairs (3, 1) and (1, -1)
    loss, stats = pair_loss(cfg, rewards, 2)
    plain, _ = pair_loss(load_config(RewardConfig, None, []), rewards, 2)
    assert float(loss - plain) == pytest.approx(0.01 * ((3 + 1) ** 2 + (1 - 1) ** 2) / 2)
    assert "rewards/centering" in stats
    with pytest.raises(ConfigError, match="margin_from_data"):
        load_config(RewardConfig, None, ["loss=kwise", "margin_from_data=true"])
