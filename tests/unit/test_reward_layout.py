"""A reward model saved in the Hugging Face sequence-classification layout: plain
``AutoModelForSequenceClassification`` gives alignlab's raw scores as its logits, padded left or
right; the normalisation travels in config.json; folders in the older checkpoint layout still load
and score the same; ``alignlab score`` reads both."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignlab.config import LoraConfig
from alignlab.data.tokenize import encode_prompt, encode_response
from alignlab.models.heads import (
    CONFIG_KEY,
    HEAD_FILE,
    RewardModel,
    load_reward_model,
    reward_layout,
    save_reward_model,
)
from alignlab.models.load import apply_lora
from alignlab.models.presets import build_tiny

TEXTS = [
    ("Hello there, how are you today?", "Fine, thanks. And you?"),
    ("Hi", "Yo"),
    ("What is two plus two?", "Four."),
]


def _rows(tok, texts=TEXTS):
    """Token ids of (prompt, response + EOS) as alignlab builds them: every row ends with EOS."""
    return [encode_prompt(tok, p) + encode_response(tok, r) for p, r in texts]


def _pad(rows, pad_id, side):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], attn[i, sl] = torch.tensor(r), 1
    return ids, attn


def _hf_logits(folder, ids, attn):
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn).logits  # (B, K)


def _random_rm(heads=2, lora=False, seed=3):
    """A tiny reward model with a planted head bias that differs per head (what the export must fold)."""
    model, tok = build_tiny(seed=seed)
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=4, dropout=0.0))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
    rm = RewardModel(model, seed=1, heads=heads).eval()
    with torch.no_grad():
        rm.head.bias.copy_(torch.tensor([0.7, -0.2, 0.4][:heads]))
    return rm, tok


@pytest.mark.parametrize("lora", [False, True])
def test_hf_logits_are_alignlab_raw_scores_with_the_bias_folded_into_the_shift(tmp_path, lora):
    rm, tok = _random_rm(heads=2, lora=lora)
    rm.shift, rm.scale = 0.5, 2.0
    norm = {"shift": 0.5, "scale": 2.0, "n": 8}
    save_reward_model(rm, tok, tmp_path / "rm", base="tiny", norm=norm)
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"]
    assert len(cfg["id2label"]) == 2
    assert cfg["pad_token_id"] == tok.pad_token_id != tok.eos_token_id
    meta = cfg[CONFIG_KEY]
    mean_bias = (0.7 - 0.2) / 2
    assert meta["shift"] == pytest.approx(0.5 - mean_bias) and meta["scale"] == 2.0 and meta["heads"] == 2
    assert meta["head_offsets"] == pytest.approx([0.7 - mean_bias, -0.2 - mean_bias])
    assert not (tmp_path / "rm" / HEAD_FILE).exists() and not (tmp_path / "rm" / "adapter_config.json").exists()
    assert reward_layout(tmp_path / "rm") == "hf"
    for side in ("right", "left"):
        ids, attn = _pad(_rows(tok), tok.pad_token_id, side)
        logits = _hf_logits(tmp_path / "rm", ids, attn)  # (3, 2)
        with torch.no_grad():
            heads = rm.forward_heads(ids, attn)  # (3, 2): the model as trained, bias included
        torch.testing.assert_close(logits, heads - torch.tensor([0.7, -0.2]), atol=1e-5, rtol=0)
        norm_hf = (logits.mean(-1) - meta["shift"]) / meta["scale"]
        torch.testing.assert_close(norm_hf, (heads.mean(-1) - 0.5) / 2.0, atol=1e-5, rtol=0)
        assert heads.mean(-1).std() > 1e-3  # the rows really differ
        loaded = load_reward_model(tmp_path / "rm", device="cpu", dtype="float32").model
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids, attn), logits.mean(-1), atol=1e-5, rtol=0)  # raw = mean logit
            torch.testing.assert_close(loaded.score(ids, attn), norm_hf, atol=1e-5, rtol=0)
            torch.testing.assert_close(loaded.forward_heads(ids, attn), heads - mean_bias, atol=1e-5, rtol=0)
            torch.testing.assert_close(loaded.disagreement(ids, attn), rm.disagreement(ids, attn), atol=1e-5, rtol=0)
    assert any("lora" in n for n, _ in rm.backbone.named_modules()) == lora  # the trained model kept its adapters


def test_eos_is_never_the_pad_token_of_the_export(tmp_path):
    """With pad = EOS, HF's "rightmost non-pad token" would skip the EOS alignlab reads; the export takes UNK."""
    rm, tok = _random_rm(heads=1)
    tok.pad_token = tok.eos_token
    save_reward_model(rm, tok, tmp_path / "rm", base="tiny")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["pad_token_id"] == tok.unk_token_id != tok.eos_token_id
    ids, attn = _pad(_rows(tok), cfg["pad_token_id"], "right")
    with torch.no_grad():
        want = rm(ids, attn) - 0.7
    torch.testing.assert_close(_hf_logits(tmp_path / "rm", ids, attn)[:, 0], want, atol=1e-5, rtol=0)
    # the planted failure: the same weights with EOS as pad read the token before EOS
    cfg["pad_token_id"] = tok.eos_token_id
    (tmp_path / "rm" / "config.json").write_text(json.dumps(cfg))
    wrong = _hf_logits(tmp_path / "rm", *_pad(_rows(tok), tok.eos_token_id, "right"))[:, 0]
    assert (wrong - want).abs().max() > 1e-3


def test_a_tokenizer_without_a_usable_pad_gets_one_added(tmp_path):
    rm, tok = _random_rm(heads=1)
    tok.pad_token = tok.eos_token
    tok.unk_token = tok.eos_token
    n_vocab = len(tok)
    save_reward_model(rm, tok, tmp_path / "rm", base="tiny")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["pad_token_id"] == n_vocab and cfg["vocab_size"] == n_vocab + 1
    assert rm.backbone.get_input_embeddings().weight.shape[0] == n_vocab  # the trained model was not resized
    ids, attn = _pad(_rows(tok), n_vocab, "left")
    with torch.no_grad():
        want = rm(ids.clamp(max=n_vocab - 1), attn) - 0.7  # the trained model has no row for the new pad
    torch.testing.assert_close(_hf_logits(tmp_path / "rm", ids, attn)[:, 0], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_the_checkpoint_layout_still_loads_and_scores_as_before(tmp_path, lora):
    rm, tok = _random_rm(heads=1, lora=lora)
    save_reward_model(
        rm, tok, tmp_path / "old", base="tiny", seed=3, norm={"shift": 0.5, "scale": 2.0}, layout="checkpoint"
    )
    assert reward_layout(tmp_path / "old") == "checkpoint" and (tmp_path / "old" / HEAD_FILE).is_file()
    loaded = load_reward_model(tmp_path / "old", device="cpu")
    ids, attn = _pad(_rows(tok), tok.pad_token_id, "right")
    with torch.no_grad():
        want = rm(ids, attn)  # bias included: the old layout keeps it
        torch.testing.assert_close(loaded.model(ids, attn), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded.model.score(ids, attn), (want - 0.5) / 2.0, atol=1e-5, rtol=0)


def test_a_folder_of_neither_layout_is_refused_with_its_name(tmp_path):
    from alignlab.errors import ModelLoadError

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelLoadError, match=f"{tmp_path}: not a reward model folder"):
        load_reward_model(tmp_path)
    with pytest.raises(ValueError, match="layout"):
        save_reward_model(*_random_rm(heads=1), tmp_path / "x", base="tiny", layout="onnx")


# ----------------------------------------------------------------------------- through the trainer
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny reward model trained for a few steps by the normal stage (LoRA: the export merges it)."""
    from alignlab.config import RewardConfig, load_config
    from alignlab.trainers.reward import train_reward

    root = tmp_path_factory.mktemp("rm")
    data = root / "prefs.jsonl"
    words = ["apple", "river", "stone", "cloud", "lamp", "tiger"]
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Q{i}: {w}?", "chosen": f"The {w}, thanks.", "rejected": f"No {w}."}) + "\n"
            for i, w in enumerate(words * 3)
        )
    )
    base = {
        "model": {"name_or_path": "tiny", "dtype": "float32", "lora": {"enabled": True, "r": 4}},
        "data": {"train": str(data), "eval_fraction": 0.0, "max_length": 64, "max_prompt_length": 32},
        "train": {
            "output_dir": str(root / "runs"),
            "run_name": "t",
            "lr": 1e-2,
            "warmup_steps": 1,
            "max_steps": 4,
            "batch_size": 6,
            "progress": False,
            "num_samples": 0,
        },
        "norm_num_prompts": 6,
        "norm_max_new_tokens": 8,
        "center_rewards": 0.1,  # moves the head bias, which the export must fold into the shift
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_CACHE", str(root / "cache"))
        summary = train_reward(load_config(RewardConfig, None, [], base=base))
    return summary, data


def test_a_trained_final_folder_loads_in_plain_transformers_with_alignlab_scores(trained):
    summary, _ = trained
    final = summary["final"]
    meta = json.loads(open(f"{final}/config.json").read())[CONFIG_KEY]
    assert meta["merged_adapter"] is True and meta["max_length"] == 64
    loaded = load_reward_model(final, device="cpu", dtype="float32")
    tok = loaded.tokenizer
    for side in ("right", "left"):
        ids, attn = _pad(_rows(tok), tok.pad_token_id, side)
        logits = _hf_logits(final, ids, attn)[:, 0]  # (3,)
        with torch.no_grad():
            raw = loaded.model(ids, attn)
            # two float32 paths (plain transformers, alignlab's head): equal to rounding of values ~1-10
            torch.testing.assert_close(logits, raw, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                loaded.model.score(ids, attn), (logits - meta["shift"]) / meta["scale"], atol=1e-5, rtol=1e-5
            )
        assert raw.std() > 1e-4
    # the fold: the trainer's shift is the mean raw score *with* the bias; the export's differs by it
    assert meta["shift"] != pytest.approx(summary["normalisation"]["shift"], abs=1e-6)


def test_score_command_reads_both_layouts_alike(trained, tmp_path):
    from alignlab.cli import main

    summary, data = trained
    loaded = load_reward_model(summary["final"], device="cpu", dtype="float32")
    rm, meta = loaded.model, loaded.norm
    with torch.no_grad():  # the same model in the old layout: the bias carries the folded mean back
        rm.head.bias.add_(summary["normalisation"]["shift"] - meta["shift"])
    rm.shift = summary["normalisation"]["shift"]
    save_reward_model(
        rm, loaded.tokenizer, tmp_path / "old", base="tiny", norm=summary["normalisation"], layout="checkpoint"
    )
    out = {}
    for name, folder in (("hf", summary["final"]), ("old", tmp_path / "old")):
        path = tmp_path / f"{name}.jsonl"
        assert main(["score", "--model", str(folder), "--data", str(data), "--out", str(path), "--device", "cpu"]) == 0
        out[name] = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(out["hf"]) == 18
    for a, b in zip(out["hf"], out["old"]):  # float32 rounding of the bias that carries the shift: relative
        assert a["chosen_score"] == pytest.approx(b["chosen_score"], rel=1e-5, abs=1e-5)
        assert a["rejected_score"] == pytest.approx(b["rejected_score"], rel=1e-5, abs=1e-5)
    assert len({round(r["chosen_score"], 4) for r in out["hf"]}) > 3  # scores differ by record
