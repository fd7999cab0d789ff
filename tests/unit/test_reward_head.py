"""The reward head reads the last real token: the same text scores the same padded left or right,
in a batch or alone; a saved reward model reloads with the same scores."""

import json

import pytest
import torch

from alignlab.config import LoraConfig
from alignlab.data.collate import pad_examples
from alignlab.data.tokenize import Example
from alignlab.models.heads import RewardModel, last_token_index, load_reward_model, save_reward_model
from alignlab.models.load import apply_lora
from alignlab.models.presets import build_tiny


def test_last_token_index_by_hand():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1]


def _examples(tok):
    texts = [("Hello there, how are you?", "Fine, thanks."), ("Hi", "Yo"), ("What is two plus two?", "Four.")]
    return [Example(tok.encode(p), tok.encode(r) + [tok.eos_token_id]) for p, r in texts]


@pytest.mark.parametrize("lora", [False, True])
def test_scores_do_not_depend_on_padding_side_or_batch(lora):
    model, tok = build_tiny(seed=0)
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=4, dropout=0.0))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
    rm = RewardModel(model, seed=0).eval()
    ex = _examples(tok)
    with torch.no_grad():
        scores = {}
        for side in ("right", "left"):
            b = pad_examples(ex, tok.pad_token_id, side=side)
            scores[side] = rm(b["input_ids"], b["attention_mask"])  # (3,)
        alone = torch.stack(
            [rm(*(lambda b: (b["input_ids"], b["attention_mask"]))(pad_examples([e], 0))) for e in ex]
        ).squeeze(-1)
    torch.testing.assert_close(scores["right"], scores["left"], atol=1e-5, rtol=0)
    torch.testing.assert_close(scores["right"], alone, atol=1e-5, rtol=0)
    assert scores["right"].std() > 1e-4  # rows really differ: reading one fixed column would not pass


@pytest.mark.parametrize("lora", [False, True])
def test_saved_reward_model_reloads_with_the_same_scores(tmp_path, lora):
    model, tok = build_tiny(seed=3)
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=4, dropout=0.0))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
    rm = RewardModel(model, seed=1).eval()
    save_reward_model(rm, tok, tmp_path / "rm", base="tiny", seed=3, norm={"shift": 0.5, "scale": 2.0})
    assert json.loads((tmp_path / "rm" / "reward_norm.json").read_text())["scale"] == 2.0
    loaded = load_reward_model(tmp_path / "rm", device="cpu")  # where `rm` is
    b = pad_examples(_examples(tok), tok.pad_token_id)
    with torch.no_grad():
        want = rm(b["input_ids"], b["attention_mask"])
        torch.testing.assert_close(loaded.model(b["input_ids"], b["attention_mask"]), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            loaded.model.score(b["input_ids"], b["attention_mask"]), (want - 0.5) / 2.0, atol=1e-5, rtol=0
        )
