"""``alignlab rewardbench`` on local files: a reward model's per-subset accuracies, sections and
score equal a hand computation from scores taken independently (plain transformers); a policy's
implicit reward equals β·(log π − log π_ref) summed over response tokens, computed here by hand;
a DPO stage's final/ brings its own β and π_ref; a bad file is one line naming file:line."""

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.data.tokenize import encode_prompt, encode_response
from alignlab.models.heads import CONFIG_KEY, RewardModel, save_reward_model
from alignlab.models.load import save_pretrained
from alignlab.models.presets import build_tiny

WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple"]
SUBSETS = ["alpacaeval-easy", "mt-bench-hard", "math-prm", "hep-python", "hep-go", "my-own"]


def _rows():
    """24 rows over six subsets; every third is best-of-3 (two more rejected responses)."""
    rows = []
    for i in range(24):
        w, v = WORDS[i % 8], WORDS[(3 * i + 1) % 8]
        row = {
            "id": i,
            "prompt": f"Tell me about the {w}.",
            "chosen": f"The {w} is {'nice' if i % 2 else 'fine'}, thanks{'!' * (i % 3)}",
            "rejected": f"A {v}.",
            "subset": SUBSETS[i % 6],
        }
        if i % 3 == 0:
            row["rejected"] = [row["rejected"], f"No {w}, {v}.", "Hm."]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def rb_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rb") / "rb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return path


@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory):
    model, tok = build_tiny(seed=5)
    rm = RewardModel(model, seed=2).eval()
    folder = tmp_path_factory.mktemp("rm") / "final"
    save_reward_model(rm, tok, folder, base="tiny", norm={"shift": 0.3, "scale": 1.5})
    return folder


def _ids(tok, prompt, response):
    p = encode_prompt(tok, prompt)
    return p, p + encode_response(tok, response)


def _hand_outcome(chosen, rejected):
    best = max(rejected)
    return 1.0 if chosen > best else 0.5 if chosen == best else 0.0


def test_reward_model_accuracies_equal_a_hand_computation(rb_file, rm_folder, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rb.json"
    assert main(["rewardbench", str(rb_file), "--model", str(rm_folder), "--out", str(out), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["scorer"]["kind"] == "reward_model" and result["n"] == 24

    # scores taken independently: plain transformers, one unpadded row at a time, normalised by config.json
    hf = AutoModelForSequenceClassification.from_pretrained(rm_folder, dtype=torch.float32).eval()
    meta = hf.config.to_dict()[CONFIG_KEY]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_folder)

    def score(prompt, response):
        _, ids = _ids(tok, prompt, response)
        with torch.no_grad():
            logit = float(hf(input_ids=torch.tensor([ids])).logits[0, 0])
        return (logit - meta["shift"]) / meta["scale"]

    by_subset = {}
    for row, got in zip(_rows(), result["rows"]):
        rejected = row["rejected"] if isinstance(row["rejected"], list) else [row["rejected"]]
        c, r = score(row["prompt"], row["chosen"]), [score(row["prompt"], x) for x in rejected]
        assert got["chosen"] == pytest.approx(c, abs=1e-4) and got["rejected"] == pytest.approx(r, abs=1e-4)
        assert got["id"] == row["id"] and got["where"].endswith(f"rb.jsonl:{row['id'] + 1}")
        by_subset.setdefault(row["subset"], []).append(_hand_outcome(c, r))
    acc = {name: sum(v) / len(v) for name, v in by_subset.items()}
    assert 0.1 < sum(sum(v) for v in by_subset.values()) / 24 < 0.9  # a random model: neither all right nor all wrong
    assert len(set(acc.values())) > 2
    for name, a in acc.items():
        assert result["subsets"][name]["accuracy"] == pytest.approx(a, abs=1e-9)
        assert result["subsets"][name]["n"] == 4
        lo, hi = result["subsets"][name]["interval"]["lo"], result["subsets"][name]["interval"]["hi"]
        assert lo <= a <= hi
    # sections: Chat and Chat Hard one subset each; Reasoning = ½ math-prm + ½ the code subsets pooled
    code = (sum(by_subset["hep-python"]) + sum(by_subset["hep-go"])) / 8
    sections = {
        "chat": acc["alpacaeval-easy"],
        "chat_hard": acc["mt-bench-hard"],
        "reasoning": 0.5 * acc["math-prm"] + 0.5 * code,
    }
    assert {k: v["accuracy"] for k, v in result["sections"].items()} == pytest.approx(sections, abs=1e-9)
    assert result["score"] == pytest.approx(sum(sections.values()) / 3, abs=1e-9)
    assert result["sections_missing"] == ["safety"]
    assert result["overall"] == pytest.approx(sum(sum(v) for v in by_subset.values()) / 24, abs=1e-9)
    assert result["macro"] == pytest.approx(sum(acc.values()) / 6, abs=1e-9)
    assert result["score_interval"]["lo"] <= result["score"] <= result["score_interval"]["hi"]
    assert "RewardBench score" in table and "my-own" in table and "section reasoning" in table


def _policy_and_ref(root):
    pol, tok = build_tiny(seed=1)
    ref, _ = build_tiny(seed=0)
    save_pretrained(pol, tok, root / "policy")
    save_pretrained(ref, tok, root / "ref")
    return pol.eval(), ref.eval(), tok


def _hand_implicit(pol, ref, tok, beta, prompt, response):
    """β·(log π − log π_ref) over the response tokens (EOS included), from full logits, unpadded."""
    p, ids = _ids(tok, prompt, response)
    x = torch.tensor([ids])
    total = 0.0
    with torch.no_grad():
        for model, sign in ((pol, 1.0), (ref, -1.0)):
            logp = torch.log_softmax(model(input_ids=x).logits[0].double(), -1)  # (T, V)
            total += sign * sum(float(logp[t - 1, ids[t]]) for t in range(len(p), len(ids)))
    return beta * total


def test_implicit_reward_is_beta_times_the_log_ratio_over_response_tokens(rb_file, tmp_path):
    pol, ref, tok = _policy_and_ref(tmp_path)
    out = tmp_path / "rb.json"
    argv = ["rewardbench", str(rb_file), "--model", str(tmp_path / "policy"), "--ref", str(tmp_path / "ref")]
    assert main(argv + ["--beta", "0.3", "--out", str(out), "--batch-size", "3", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["scorer"] == {
        "kind": "implicit_reward",
        "model": str(tmp_path / "policy"),
        "ref": str(tmp_path / "ref"),
        "beta": 0.3,
        "length_normalize": False,
    }
    rows = _rows()
    for row, got in list(zip(rows, result["rows"]))[:6]:
        rejected = row["rejected"] if isinstance(row["rejected"], list) else [row["rejected"]]
        want_c = _hand_implicit(pol, ref, tok, 0.3, row["prompt"], row["chosen"])
        assert got["chosen"] == pytest.approx(want_c, abs=1e-4)
        assert got["rejected"] == pytest.approx(
            [_hand_implicit(pol, ref, tok, 0.3, row["prompt"], r) for r in rejected], abs=1e-4
        )
    assert max(abs(r["chosen"]) for r in result["rows"]) > 0.1  # two different models: the ratio is not 0


def test_a_dpo_stage_final_brings_its_beta_and_reference(rb_file, tmp_path, capsys):
    import shutil

    from alignlab.config import DPOConfig, load_config, save_config
    from alignlab.errors import ConfigError
    from alignlab.rewardbench_cli import run_rewardbench

    pol, ref, tok = _policy_and_ref(tmp_path)
    stage = tmp_path / "runs" / "r" / "dpo"
    stage.mkdir(parents=True)
    shutil.copytree(tmp_path / "policy", stage / "final")
    cfg = load_config(DPOConfig, None, [], base={"model": {"name_or_path": str(tmp_path / "ref")}, "beta": 0.25})
    save_config(cfg, stage / "config.yaml")
    result = run_rewardbench(str(rb_file), str(stage / "final"), device="cpu")
    assert result["scorer"]["beta"] == 0.25 and result["scorer"]["ref"] == str(tmp_path / "ref")
    assert "beta = 0.25 (from" in capsys.readouterr().err
    row = _rows()[1]
    assert result["rows"][1]["chosen"] == pytest.approx(
        _hand_implicit(pol, ref, tok, 0.25, row["prompt"], row["chosen"]), abs=1e-4
    )
    # an explicit --beta wins over the run's
    assert run_rewardbench(str(rb_file), str(stage / "final"), beta=0.5, device="cpu")["scorer"]["beta"] == 0.5
    # IPO trains on mean per-token log-probs: its implicit reward is the per-token log-ratio
    cfg = load_config(DPOConfig, None, [], base={"model": {"name_or_path": str(tmp_path / "ref")}, "loss": "ipo"})
    save_config(cfg, stage / "config.yaml")
    result = run_rewardbench(str(rb_file), str(stage / "final"), device="cpu")
    assert result["scorer"]["length_normalize"] is True and result["scorer"]["beta"] == 0.1  # IPO's default β
    n = len(encode_response(tok, row["chosen"]))
    assert result["rows"][1]["chosen"] == pytest.approx(
        _hand_implicit(pol, ref, tok, 0.1, row["prompt"], row["chosen"]) / n, abs=1e-5
    )
    cfg = load_config(DPOConfig, None, [], base={"model": {"name_or_path": str(tmp_path / "ref")}, "loss": "simpo"})
    save_config(cfg, stage / "config.yaml")
    with pytest.raises(ConfigError, match="no reference model"):
        run_rewardbench(str(rb_file), str(stage / "final"), device="cpu")


def test_bad_input_is_one_line_naming_it(rb_file, rm_folder, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "q", "chosen": "a", "rejected": []})
        + "\n"
    )
    assert main(["rewardbench", str(bad), "--model", str(rm_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:2" in err and "'rejected'" in err
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    assert main(["rewardbench", str(bad), "--model", str(rm_folder)]) == 2
    assert f"{bad}:1" in capsys.readouterr().err
    # a reward model takes no --beta; a policy needs --ref and --beta
    assert main(["rewardbench", str(rb_file), "--model", str(rm_folder), "--beta", "0.1"]) == 2
    assert "is a reward model" in capsys.readouterr().err
    save_pretrained(*build_tiny(seed=0), tmp_path / "pol")
    assert main(["rewardbench", str(rb_file), "--model", str(tmp_path / "pol")]) == 2
    err = capsys.readouterr().err
    assert "give --ref and --beta" in err and err.count("\n") == 1
