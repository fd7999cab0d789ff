"""evaluate_run: scored rows in, eval.json (the documented schema) out, through runs.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alignlab import runs
from alignlab.eval import evaluate, stats

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "paper",
    "music",
    "garden",
    "window",
    "yellow",
    "silver",
    "bridge",
    "forest",
    "candle",
    "winter",
    "ocean",
]


def _text(rng, n=12):
    return " ".join(rng.choice(WORDS, size=n))


def _rows(rng, n_prompts, per_prompt, shift, kl_scale=None):
    rows = []
    for p in range(n_prompts):
        difficulty = p / n_prompts
        for _ in range(per_prompt):
            gold = difficulty + shift + rng.normal(0, 0.3)
            row = {
                "prompt": [{"role": "user", "content": f"question {p}"}],
                "response": _text(rng),
                "gold": float(gold),
                "score": float(gold + rng.normal(0, 0.1)),
                "length": 12,
            }
            if kl_scale is not None:
                lp = rng.normal(-1.0, 0.1, size=5)
                row["logprobs"] = lp.tolist()
                row["ref_logprobs"] = (lp - kl_scale).tolist()
            rows.append(row)
    return rows


@pytest.fixture()
def run(tmp_path):
    path = tmp_path / "run"
    runs.write_manifest(path, profile="tiny", stages=["sft", "ppo"])
    ppo = runs.StageFolder(path / "ppo")
    runs.atomic_write_jsonl(ppo.metrics, [{"step": i, "split": "train", "entropy": 2.0 * 0.8**i} for i in range(30)])
    for step, ratio in ((1, 0.0), (2, 0.5)):  # rollouts: two responses of two tokens, each token's log ratio = ratio
        rows = [{"step": step, "logprobs": [-1.0, -1.0], "ref_logprobs": [-1.0 - ratio] * 2, "score": float(step)}] * 2
        runs.atomic_write_jsonl(ppo.rollout_path(step), rows)
    return path


def test_evaluate_run_writes_the_documented_summary(run):
    rng = np.random.default_rng(0)
    policies = {
        "sft": _rows(rng, 30, 4, 0.0, kl_scale=0.0),
        "ppo": _rows(rng, 30, 1, 0.5, kl_scale=0.2),
    }
    checkpoints = {f"ppo/step-{k}": _rows(rng, 30, 1, 0.2 * k, kl_scale=0.1 * k) for k in (1, 2, 3)}
    out = evaluate.evaluate_run(run, policies=policies, checkpoints=checkpoints)

    on_disk = json.loads((run / "eval" / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(out))
    assert evaluate.read_eval(run) == on_disk
    assert out["schema"] == 1 and out["baseline"] == "sft"

    sft, ppo = out["policies"]["sft"], out["policies"]["ppo"]
    assert sft["win_rate"] is None and sft["gain"] is None
    assert (sft["n_samples"], sft["n_prompts"], ppo["n_prompts"]) == (120, 30, 30)
    assert ppo["win_rate"]["win_rate"] > 0.7 and ppo["win_rate"]["n"] == 30
    assert ppo["gain"]["significant"] and ppo["gain"]["mean"] == pytest.approx(0.5, abs=0.2)
    # the gain is the paired mean over prompts: recompute it by hand
    base = {}
    for r in policies["sft"]:
        base.setdefault(r["prompt"][0]["content"], []).append(r["gold"])
    by_hand = np.mean([r["gold"] - np.mean(base[r["prompt"][0]["content"]]) for r in policies["ppo"]])
    assert ppo["gain"]["mean"] == pytest.approx(by_hand)
    # KL: every token's log ratio is 0.2, five tokens → k1 = 1.0 per response
    assert ppo["kl"]["k1"]["mean"] == pytest.approx(1.0) and sft["kl"]["k3"]["mean"] == pytest.approx(0.0)
    assert set(ppo["monitors"]) == {"length_drift", "repetition", "diversity"}
    assert not any(m["fired"] for m in ppo["monitors"].values())

    bon = out["frontier"]["best_of_n"]
    assert bon["source"] == "sft" and [p["n"] for p in bon["by_gold"]] == [1, 2, 3, 4]
    assert bon["by_proxy"][-1]["gold"] <= bon["by_gold"][-1]["gold"]  # picking by proxy never beats the oracle
    assert out["overoptimisation"]["bon"]["form"] == "bon"
    assert out["overoptimisation"]["rl"]["n"] == 3  # fitted on the checkpoints
    assert [p["name"] for p in out["frontier"]["checkpoints"]] == ["ppo/step-1", "ppo/step-2", "ppo/step-3"]
    assert out["training_monitors"]["ppo"]["entropy_collapse"]["fired"]
    kl_trace = out["training_kl"]["ppo"]
    assert [r["step"] for r in kl_trace] == [1, 2] and kl_trace[1]["k1"]["mean"] == pytest.approx(1.0)
    assert kl_trace[1]["k3"]["mean"] == pytest.approx(2 * (np.exp(-0.5) - 1 + 0.5)) and kl_trace[1]["score"] == 2.0

    samples = runs.StageFolder(run / "eval").read_samples()
    assert len(samples) == 150 and {s["policy"] for s in samples} == {"sft", "ppo"}
    assert "logprobs" not in samples[0]


def test_ties_and_gold_fn(tmp_path):
    prompts = [f"p{i}" for i in range(10)]
    sft = [{"prompt": p, "response": "a b c d"} for p in prompts]
    pol = [{"prompt": p, "response": "a b c d" if i < 4 else "a b c d e f"} for i, p in enumerate(prompts)]
    calls = []

    def gold_fn(ps, rs):
        calls.append(len(rs))
        return [float(len(r.split())) for r in rs]

    out = evaluate.evaluate_run(tmp_path / "r", policies={"sft": sft, "x": pol}, gold_fn=gold_fn, write=False)
    wr = out["policies"]["x"]["win_rate"]
    assert (wr["wins"], wr["ties"], wr["losses"]) == (6, 4, 0)
    assert wr["win_rate"] == pytest.approx(0.8) and wr["wilson"] == pytest.approx(list(stats.wilson_interval(8, 10)))
    assert calls == [10, 10]
    assert not (tmp_path / "r").exists()  # write=False touches nothing
    assert out["frontier"]["best_of_n"]["source"] is None and out["overoptimisation"] == {"bon": None, "rl": None}


def test_baseline_must_be_a_policy(tmp_path):
    from alignlab.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline 'sft'.*did you mean 'sft1'"):
        evaluate.evaluate_run(tmp_path, policies={"ppo": [], "sft1": []})


def test_gold_fn_gets_the_last_user_message(tmp_path):
    seen = []

    def gold_fn(prompts, responses):
        seen.extend(prompts)
        return [0.0] * len(prompts)

    chat = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "last"},
    ]
    evaluate.evaluate_run(
        tmp_path,
        policies={"sft": [{"prompt": chat, "response": "x"}, {"prompt": "plain", "response": "y"}]},
        gold_fn=gold_fn,
        write=False,
    )
    assert seen == ["last", "plain"]


def test_result_does_not_depend_on_row_order(tmp_path):
    rng = np.random.default_rng(3)
    sft, ppo = _rows(rng, 15, 2, 0.0), _rows(rng, 15, 1, 0.3)
    a = evaluate.evaluate_run(tmp_path, policies={"sft": sft, "ppo": ppo}, write=False)
    b = evaluate.evaluate_run(tmp_path, policies={"sft": sft[::-1], "ppo": ppo[::-1]}, write=False)
    for key in ("win_rate", "gain"):
        assert a["policies"]["ppo"][key] == b["policies"]["ppo"][key]


def test_non_finite_numbers_become_null_and_checkpoints_get_the_proxy_gold_gap(tmp_path):
    row = {"prompt": "p", "response": "r", "gold": 1.0, "logprobs": [0.0], "ref_logprobs": [float("-inf")]}
    # proxy rises across checkpoints while gold peaks at the second and falls
    ckpts = {
        f"step-{k}": [{"prompt": "p", "response": "r", "gold": g, "score": float(k)}]
        for k, g in enumerate([0.0, 1.0, 0.6, 0.2, 0.1])
    }
    out = evaluate.evaluate_run(tmp_path / "run", policies={"sft": [row]}, checkpoints=ckpts)
    assert out["policies"]["sft"]["kl"]["k1"]["mean"] is None  # +inf in memory, null on disk
    text = (tmp_path / "run" / "eval" / "eval.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert out["training_monitors"]["checkpoints"]["proxy_gold_gap"]["fired"]


def test_planted_failures_fire_in_eval_json(tmp_path):
    rng = np.random.default_rng(5)
    sft = _rows(rng, 12, 1, 0.0)
    looping = [dict(r, response="great " * 60) for r in sft]  # repeats one word, 5x longer, all the same
    out = evaluate.evaluate_run(tmp_path, policies={"sft": sft, "hacked": looping}, write=False)
    fired = {k for k, m in out["policies"]["hacked"]["monitors"].items() if m["fired"]}
    assert fired == {"repetition", "diversity"}  # token lengths (12 each) are given, so the drift uses them
    no_lengths = [{k: v for k, v in r.items() if k != "length"} for r in looping]
    out = evaluate.evaluate_run(tmp_path, policies={"sft": sft, "hacked": no_lengths}, write=False)
    assert out["policies"]["hacked"]["monitors"]["length_drift"]["fired"]  # words: 60 vs 12
    assert not any(m["fired"] for m in out["policies"]["sft"]["monitors"].values())
