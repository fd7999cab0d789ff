"""Reward model on the tiny backbone: it learns a known rule, resumes exactly, normalises its
scores on the reference policy's responses, and `alignlab score` writes one line per record."""

import json

import pytest

from alignlab.cli import main
from alignlab.data.tokenize import Example
from alignlab.models.heads import load_reward_model, score_examples
from alignlab.trainers.reward import train_reward
from alignlab.trainers.run import read_metrics


@pytest.fixture
def trained(trained_reward):
    return trained_reward[0]


def test_reward_model_learns_the_rule_on_heldout_prompts(trained):
    ev = trained["eval"]
    assert ev["pairs"] == 12  # 25% of 48 prompts, none seen in training
    assert ev["accuracy"] > 0.9
    assert ev["margin"] > 1.0
    assert 0 <= ev["ece"] < 0.5
    rows = [r for r in read_metrics(trained["run_dir"]) if r["split"] == "train"]
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]


def test_normalised_scores_of_the_normalisation_set_have_mean_0_std_1(trained):
    final = trained["final"]
    norm = json.loads(open(f"{final}/reward_norm.json").read())
    assert norm["n"] == 8 and norm["scale"] > 0
    loaded = load_reward_model(final, dtype="float32")
    rows = [json.loads(x) for x in open(f"{trained['run_dir']}/norm_samples.jsonl")]
    samples = [Example(r["prompt_ids"], r["response_ids"]) for r in rows]
    raw = score_examples(loaded.model, samples, loaded.tokenizer.pad_token_id)
    scores = score_examples(loaded.model, samples, loaded.tokenizer.pad_token_id, normalised=True).double()
    assert raw.std(unbiased=False) > 1e-3 and abs(raw.mean()) > 1e-3  # not already normalised by chance
    assert abs(float(scores.mean())) < 1e-4
    assert abs(float(scores.std(unbiased=False)) - 1.0) < 1e-4


def test_score_command_writes_one_score_per_record(trained_reward, tmp_path, capsys):
    trained, reward_file = trained_reward
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", trained["final"], "--data", str(reward_file), "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 48
    assert all(set(r) == {"where", "chosen_score", "rejected_score"} for r in rows)
    assert sum(r["chosen_score"] > r["rejected_score"] for r in rows) >= 44
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"hi {i}", "response": "ok, thanks."}) + "\n" for i in range(5)))
    assert main(["score", "--model", trained["final"], "--data", str(sft), "--out", str(out)]) == 0
    assert [set(json.loads(x)) for x in out.read_text().splitlines()] == [{"where", "score"}] * 5


@pytest.mark.parametrize("lora", [False, True])
def test_resume_is_exact(tiny_reward_config, lora):
    over = {
        "train.max_steps": 8,
        "train.save_every": 4,
        "model.lora.enabled": lora,
        "model.lora.dropout": 0.1,
        "magnitude_penalty": 0.01,
    }
    straight = train_reward(tiny_reward_config(**over, **{"train.run_name": "straight"}))
    half = train_reward(tiny_reward_config(**over, **{"train.run_name": "resumed"}), stop_after=4)
    assert half["steps"] == 4 and "final" not in half
    resumed = train_reward(tiny_reward_config(**over, **{"train.run_name": "resumed", "train.resume": True}))
    a = [r["loss"] for r in read_metrics(straight["run_dir"]) if r["split"] == "train"]
    b = [r["loss"] for r in read_metrics(resumed["run_dir"]) if r["split"] == "train"]
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6
    assert abs(straight["eval"]["accuracy"] - resumed["eval"]["accuracy"]) < 1e-6
    assert straight["normalisation"]["shift"] == pytest.approx(resumed["normalisation"]["shift"], abs=1e-6)


def test_listwise_loss_on_rankings(tiny_reward_config, tmp_path):
    path = tmp_path / "rank.jsonl"
    with open(path, "w") as fh:
        for i in range(24):
            # K differs across prompts (3 or 4): the loss takes each K as its own block
            answers = ["Yes, thanks.", "Yes.", "No.", "Never!"][: 3 + i % 2]
            fh.write(
                json.dumps(
                    {"prompt": f"Q{i}?", "responses": answers[::-1], "ranking": list(range(len(answers), 0, -1))}
                )
                + "\n"
            )
    cfg = tiny_reward_config(
        **{"data.train": str(path), "data_kind": "ranking", "loss": "plackett_luce", "train.max_steps": 10}
    )
    summary = train_reward(cfg)
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert summary["eval"]["accuracy"] > 0.9  # eval sees every pair of the held-out rankings
    assert summary["train_items"] == 18  # groups, not pairs


def test_an_ensemble_of_heads_learns_logs_its_disagreement_and_reloads(tiny_reward_config):
    import torch

    summary = train_reward(tiny_reward_config(**{"heads": 3, "train.max_steps": 12}))
    rows = [r for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]
    assert all(r["rm/disagreement"] > 0 for r in rows)  # three heads, three initialisations
    assert summary["eval"]["accuracy"] > 0.8
    loaded = load_reward_model(summary["final"])
    rm = loaded.model
    assert rm.n_heads == 3
    ids = torch.tensor([loaded.tokenizer.encode("Hello there, friend.")])
    attn = torch.ones_like(ids)
    with torch.no_grad():
        heads = rm.forward_heads(ids, attn)  # (1, 3)
        assert torch.allclose(rm(ids, attn), heads.mean(-1))  # the reward is the heads' mean
        assert float(rm.disagreement(ids, attn)[0]) == pytest.approx(float((heads / rm.scale).std(-1)[0]), rel=1e-5)
    from alignlab.rollout.rewards import load_reward_source

    source = load_reward_source(summary["final"])  # as PPO scores with it: the spread is kept for the step's metrics
    source.score(["Hello"], ["there, friend."], finished=[True], meta=[{}])
    assert source.last_disagreement is not None and source.last_disagreement > 0
