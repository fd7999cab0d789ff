"""lm-eval wiring with a stub ``lm_eval`` module (the package is not needed), the missing-package
error, LoRA folders merged for lm-eval's ``hf`` model, and the --lm-eval flag."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from alignlab.errors import AlignlabError, ConfigError
from alignlab.eval import evaluate, lm_harness


def _stub(monkeypatch, result=None, error=None):
    calls = []

    def simple_evaluate(**kw):
        path = Path(kw["model_args"]["pretrained"])
        seen = {
            "kw": kw,
            "offline": os.environ.get("HF_DATASETS_OFFLINE"),
            "hub_offline": __import__("huggingface_hub").constants.HF_HUB_OFFLINE,  # imported before: its own flag
            "files": sorted(p.name for p in path.iterdir()),
        }
        calls.append(seen)
        if error is not None:
            raise error
        return result or {
            "results": {
                t: {"alias": t, "acc,none": 0.25 + 0.25 * i, "acc_stderr,none": 0.01} for i, t in enumerate(kw["tasks"])
            },
            "configs": {},
        }

    module = types.ModuleType("lm_eval")
    module.simple_evaluate = simple_evaluate
    monkeypatch.setitem(sys.modules, "lm_eval", module)
    return calls


def _full_folder(path: Path) -> Path:
    from alignlab.models.load import save_pretrained
    from alignlab.models.presets import build_tiny

    model, tok = build_tiny(seed=0)
    save_pretrained(model, tok, path, base="tiny")
    return path


def test_missing_lm_eval_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(ConfigError) as err:
        lm_harness.require_lm_eval(["hellaswag"])
    msg = str(err.value)
    assert "\n" not in msg and "eval.lm_eval (hellaswag)" in msg and "pip install lm-eval" in msg


def test_stub_gets_each_full_weights_folder_and_its_results_reach_eval_json(monkeypatch, tmp_path):
    calls = _stub(monkeypatch)
    folders = {"sft": _full_folder(tmp_path / "sft" / "final"), "dpo": _full_folder(tmp_path / "dpo" / "final")}
    out = lm_harness.run_lm_eval(folders, ["hellaswag", "arc_easy"], limit=5, device="cpu", seed=3)
    assert [c["kw"]["model_args"] for c in calls] == [
        {"pretrained": str(folders["sft"])},
        {"pretrained": str(folders["dpo"])},
    ]
    kw = calls[0]["kw"]
    assert kw["model"] == "hf" and kw["tasks"] == ["hellaswag", "arc_easy"] and kw["limit"] == 5
    assert kw["device"] == "cpu" and kw["random_seed"] == 3
    assert calls[0]["offline"] == "1"  # no download from inside the harness
    assert calls[0]["hub_offline"] is True
    assert out == {
        "tasks": ["hellaswag", "arc_easy"],
        "limit": 5,
        "results": {
            name: {
                "hellaswag": {"acc,none": 0.25, "acc_stderr,none": 0.01},
                "arc_easy": {"acc,none": 0.5, "acc_stderr,none": 0.01},
            }
            for name in ("sft", "dpo")
        },
    }
    ev = evaluate.evaluate_run(
        tmp_path, policies={"sft": [{"prompt": "p", "response": "r", "gold": 0.0}]}, lm_eval=out, write=False
    )
    assert ev["lm_eval"] == out


def test_a_lora_folder_is_merged_into_a_plain_folder_for_lm_eval(monkeypatch, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignlab.config.sections import LoraConfig
    from alignlab.models.load import apply_lora, save_pretrained
    from alignlab.models.presets import build_tiny

    model, tok = build_tiny(seed=0)
    model = apply_lora(model, LoraConfig(enabled=True, r=4, dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make the adapter a no-op: plant a real one
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    folder = tmp_path / "ppo" / "final"
    save_pretrained(model, tok, folder, base="tiny")
    assert (folder / "adapter_config.json").is_file()

    merged = {}

    def simple_evaluate(**kw):
        path = Path(kw["model_args"]["pretrained"])
        merged["path"], merged["files"] = path, {p.name for p in path.iterdir()}
        loaded = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        with torch.no_grad():
            merged["logits"] = loaded(input_ids=ids).logits
        return {"results": {"hellaswag": {"acc,none": 0.3}}}

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    out = lm_harness.run_lm_eval({"ppo": folder}, ["hellaswag"])
    assert merged["path"] != folder and "config.json" in merged["files"]
    assert "adapter_config.json" not in merged["files"]  # lm-eval gets a plain transformers folder
    torch.testing.assert_close(merged["logits"], want, atol=1e-4, rtol=1e-4)  # ... holding the adapted model
    assert not merged["path"].exists()  # the temporary merge is gone
    assert out["results"] == {"ppo": {"hellaswag": {"acc,none": 0.3}}}


def test_a_task_without_local_data_is_one_line_naming_it(monkeypatch, tmp_path):
    _stub(monkeypatch, error=ConnectionError("Couldn't reach 'hellaswag' on the Hub (LocalEntryNotFoundError)\ntrace"))
    with pytest.raises(AlignlabError) as err:
        lm_harness.run_lm_eval({"sft": _full_folder(tmp_path / "f")}, ["hellaswag"])
    msg = str(err.value)
    assert "\n" not in msg and "hellaswag on sft" in msg and "ConnectionError" in msg
    assert "local Hugging Face datasets cache" in msg


def test_lm_eval_flag_sets_the_config_key(monkeypatch, tmp_path):
    import alignlab.eval.stage
    from alignlab import cli

    seen = {}

    def fake_run_eval(cfg):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(alignlab.eval.stage, "run_eval", fake_run_eval)  # the table resolves it by name
    assert cli.main(["eval", "--lm-eval", "hellaswag,arc_easy", f"output_dir={tmp_path}"]) == 0
    assert seen["cfg"].lm_eval == ["hellaswag", "arc_easy"]
    seen.clear()
    cli.main(["eval", "--lm-eval", "hellaswag", "lm_eval=piqa", f"output_dir={tmp_path}"])
    assert seen["cfg"].lm_eval == ["piqa"]  # an explicit key=value wins over the flag
