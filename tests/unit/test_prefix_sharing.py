"""Prefix sharing: a pair laid out as ``[prompt | chosen | rejected]`` (its prompt computed once)
gives the same chosen/rejected log-prob sums, DPO gradients, reward scores and Bradley–Terry
gradients as chosen and rejected on rows of their own; a planted leak (rejected attending to
chosen) or a wrong predicting position is caught; a model that ignores 4-D masks is detected."""

import logging

import pytest
import torch

from alignlab.data.collate import collate_pairs, collate_shared_pairs
from alignlab.data.tokenize import PairExample
from alignlab.losses.preference import preference_loss
from alignlab.losses.reward import bradley_terry
from alignlab.models.heads import RewardModel
from alignlab.models.logprobs import prompt_sharing_works, shares_prefix_exactly
from alignlab.models.presets import build_tiny
from alignlab.trainers.reference import seq_logps
from alignlab.trainers.reward import batch_rewards

MODELS = {
    "tiny": {},  # the preset: 2 layers, 4 query heads sharing 2 key/value heads
    "llama-gqa-eager": dict(
        num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False
    ),
}


def make_model(name: str, seed: int = 1):
    over = dict(MODELS[name])
    model, _ = build_tiny(seed=seed, **over)
    if name.endswith("eager"):
        model.config._attn_implementation = "eager"  # the other attention path (the preset uses SDPA)
    return model


def random_pairs(n: int, seed: int = 0) -> list[PairExample]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, 250, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return [PairExample(ids(1, 20), ids(1, 14), ids(1, 14), f"p:{i}") for i in range(n)]


def assert_grads_close(got: dict, want: dict, rtol: float = 1e-5) -> None:
    """Every parameter's gradient equal to ``rtol`` of its own scale (float32 sums in another order).

    A gradient that is 0 in exact arithmetic (the reward head's bias: Bradley–Terry sees only
    differences) is float noise; its scale is floored at 1e-2 of the largest gradient.
    """
    top = max(float(w.abs().max()) for w in want.values())
    for name, w in want.items():
        scale = max(float(w.abs().max()), 1e-2 * top)
        torch.testing.assert_close(got[name], w, rtol=rtol, atol=rtol * scale, msg=name)


def dpo_step(model, batch: dict, n_pairs: int):
    """(seq_logps (2B,), gradient of the DPO loss per parameter) of one batch."""
    model.zero_grad()
    logps = seq_logps(model, batch)
    ref = torch.linspace(-60, -20, 2 * n_pairs)  # fixed, unequal reference sums: the loss is not symmetric
    loss, _ = preference_loss(
        "dpo",
        chosen_logps=logps[:n_pairs],
        rejected_logps=logps[n_pairs:],
        ref_chosen_logps=ref[:n_pairs],
        ref_rejected_logps=ref[n_pairs:],
        beta=0.1,
    )
    loss.backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------- the layout, by hand
def test_layout_by_hand():
    pairs = [PairExample([5, 6], [10, 11], [20], "a"), PairExample([7], [30], [40, 41], "b")]
    batch = collate_shared_pairs(pairs, pad_id=0)  # one pair per row: T = max(5, 4) = 5
    assert batch["input_ids"].tolist() == [[5, 6, 10, 11, 20], [7, 30, 40, 41, 0]]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 2],  # rejected continues from the prompt's end (2), not from chosen's
        [0, 1, 1, 2, 0],
    ]
    m = batch["attention_mask"][0, 0].int().tolist()  # (T, T), row = query
    assert m == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # chosen: prompt + chosen so far
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # rejected: prompt + itself, never chosen
    ]
    assert batch["attention_mask"][1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]  # padding sees itself only
    # predicting positions (row * T + col): the last prompt column predicts both first tokens
    assert batch["logp_source"].tolist() == [1, 2, 1, 5, 5, 7]
    assert batch["logp_target"].tolist() == [10, 11, 20, 30, 40, 41]
    assert batch["seq_index"].tolist() == [0, 0, 2, 1, 3, 3]  # chosen 0..B-1, then rejected B..2B-1
    assert batch["seq_lengths"].tolist() == [2, 1, 1, 2]
    assert batch["score_index"].tolist() == [3, 6, 4, 8]  # last token of each response
    assert batch["n_tokens"] == 9 and batch["loss_weight"] == 2 and batch["n_pairs"] == 2


def test_packed_layout_keeps_pairs_apart():
    pairs = [PairExample([5, 6], [10], [20], "a"), PairExample([7], [30], [40], "b")]
    batch = collate_shared_pairs(pairs, pad_id=0, pack_width=8)  # both pairs in one row: 4 + 3 columns
    assert batch["input_ids"].tolist() == [[5, 6, 10, 20, 7, 30, 40]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2, 0, 1, 1]]
    m = batch["attention_mask"][0, 0]
    assert not m[4:, :4].any() and not m[:4, 4:].any()  # block-diagonal by pair
    assert batch["logp_source"].tolist() == [1, 1, 4, 4]


# ----------------------------------------------------------------------------- DPO: log-probs and gradients
@pytest.mark.parametrize("pack_width,width", [(None, None), (64, None), (None, 48.0)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_prompt_equals_unshared_logps_and_dpo_gradients(name, pack_width, width):
    model = make_model(name)
    pairs = random_pairs(6)
    want, want_grads = dpo_step(model, collate_pairs(pairs, 0, pack_width), len(pairs))
    shared = collate_shared_pairs(pairs, 0, pack_width, attention_width=width)
    if width:  # the cheapest layout here mixes: several rows, some holding more than one pair
        assert 1 < shared["input_ids"].shape[0] < len(pairs)
    got, got_grads = dpo_step(model, shared, len(pairs))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads)
    plain = collate_pairs(pairs, 0, pack_width)
    assert shared["n_tokens"] < plain["n_tokens"]  # the point: each prompt once


def test_a_planted_leak_or_a_wrong_position_is_caught():
    model = make_model("tiny")
    pairs = random_pairs(4, seed=3)
    want, want_grads = dpo_step(model, collate_pairs(pairs, 0), len(pairs))

    leak = collate_shared_pairs(pairs, 0)
    T = leak["input_ids"].shape[1]
    leak["attention_mask"] = leak["attention_mask"] | torch.tril(
        torch.ones(T, T, dtype=torch.bool)
    )  # rejected sees chosen
    got, got_grads = dpo_step(model, leak, len(pairs))
    torch.testing.assert_close(got[:4], want[:4], rtol=1e-5, atol=1e-5)  # chosen is untouched by the leak ...
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # ... rejected is not
    with pytest.raises(AssertionError):
        assert_grads_close(got_grads, want_grads)

    shifted = collate_shared_pairs(pairs, 0)  # the first rejected token read after the last chosen token
    B = len(pairs)
    first_rejected = [(shifted["seq_index"] == B + i).nonzero()[0, 0] for i in range(B)]
    for k, i in zip(first_rejected, range(B)):
        shifted["logp_source"][k] = shifted["score_index"][i]
    got, _ = dpo_step(model, shifted, B)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the reward model
def bt_step(rm, batch: dict, n_pairs: int):
    rm.zero_grad()
    rewards = batch_rewards(rm, batch)  # (2B, K)
    loss = sum(bradley_terry(rewards[:n_pairs, k], rewards[n_pairs:, k])[0] for k in range(rewards.shape[1]))
    loss.backward()
    return rewards.detach(), {n: p.grad.clone() for n, p in rm.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_shared_prompt_equals_unshared_reward_scores_and_bt_gradients(name, heads):
    rm = RewardModel(make_model(name, seed=2), seed=0, heads=heads)
    pairs = random_pairs(5, seed=1)
    want, want_grads = bt_step(rm, collate_pairs(pairs, 0), len(pairs))
    got, got_grads = bt_step(rm, collate_shared_pairs(pairs, 0), len(pairs))
    assert want.std() > 1e-3  # the scores differ between responses: a constant read would not pass
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads)

    leak = collate_shared_pairs(pairs, 0)
    T = leak["input_ids"].shape[1]
    leak["attention_mask"] = leak["attention_mask"] | torch.tril(torch.ones(T, T, dtype=torch.bool))
    bad, _ = bt_step(rm, leak, len(pairs))
    torch.testing.assert_close(bad[:5], want[:5], rtol=1e-5, atol=1e-5)  # chosen scores untouched
    with pytest.raises(AssertionError):
        torch.testing.assert_close(bad, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- models that cannot share
def test_the_probe_accepts_llama_and_refuses_a_model_that_ignores_4d_masks(caplog):
    model = make_model("tiny")
    ok, why = shares_prefix_exactly(model)
    assert ok, why

    trunk = model.model
    plain_forward = trunk.forward

    def ignores_masks(*args, attention_mask=None, **kw):  # as an attention kernel that takes causal only
        return plain_forward(*args, attention_mask=None, **kw)

    trunk.forward = ignores_masks
    ok, why = shares_prefix_exactly(model)
    assert not ok and "4-D mask changed" in why
    log = logging.getLogger("test.prefix")
    with caplog.at_level(logging.INFO, logger="test.prefix"):
        assert prompt_sharing_works(model, log) is False
    assert "pairs unshared" in caplog.text

    def rejects_masks(*args, attention_mask=None, **kw):
        if attention_mask is not None and attention_mask.dim() == 4:
            raise ValueError("4-D masks are not supported by this attention implementation")
        return plain_forward(*args, attention_mask=attention_mask, **kw)

    trunk.forward = rejects_masks
    ok, why = shares_prefix_exactly(model)
    assert not ok and why.startswith("ValueError")
    assert model.training  # the probe leaves the train/eval mode as it found it


# ----------------------------------------------------------------------------- the stages
def _dpo_config(tmp_path, name: str, **over):
    from alignlab.config import DPOConfig, load_config

    base = {
        "model": {"name_or_path": "tiny"},
        "data": {
            "train": "demo:preferences",
            "limit": 16,
            "eval_fraction": 0.0,
            "max_length": 96,
            "max_prompt_length": 64,
        },
        "data_kind": "preference",
        "reference_cache": False,
        "train": {
            "output_dir": str(tmp_path / "runs"),
            "run_name": name,
            "max_steps": 3,
            "batch_size": 4,
            "lr": 3e-3,
            "progress": False,
            "num_samples": 0,
            "save_every": 0,
        },
    }
    return load_config(DPOConfig, None, [f"{k}={v}" for k, v in over.items()], base=base)


def test_dpo_stage_shares_by_default_and_falls_back_with_a_log_line(tmp_path, monkeypatch):
    from alignlab.models import logprobs
    from alignlab.trainers.dpo import train_dpo
    from alignlab.trainers.run import read_metrics

    shared = train_dpo(_dpo_config(tmp_path, "shared"))
    plain = train_dpo(_dpo_config(tmp_path, "plain", **{"data.share_prompt": "false"}))
    monkeypatch.setattr(logprobs, "shares_prefix_exactly", lambda model: (False, "planted: no 4-D masks"))
    fallback = train_dpo(_dpo_config(tmp_path, "fallback"))
    assert shared["share_prompt"] is True and plain["share_prompt"] is False and fallback["share_prompt"] is False
    log = (tmp_path / "runs" / "fallback" / "dpo" / "log.txt").read_text()
    assert "planted: no 4-D masks" in log and "pairs unshared" in log

    def curve(summary):
        return [r["loss"] for r in read_metrics(summary["run_dir"]) if r["split"] == "train"]

    assert len(curve(shared)) == 3 and curve(shared)[-1] != curve(shared)[0]  # it trained
    assert curve(shared) == pytest.approx(curve(plain), abs=1e-5)  # three steps of the same maths
    assert curve(fallback) == curve(plain)  # the fallback is the unshared path itself


def test_reward_stage_shares_by_default_with_the_same_curve(tmp_path):
    from alignlab.config import RewardConfig, load_config
    from alignlab.trainers.reward import train_reward
    from alignlab.trainers.run import read_metrics

    def run(name, *over):
        base = {
            "model": {"name_or_path": "tiny"},
            "data": {"train": "demo:preferences", "limit": 16, "eval_fraction": 0.0, "max_length": 96},
            "norm_num_prompts": 0,
            "train": {"output_dir": str(tmp_path / "runs"), "run_name": name, "max_steps": 3, "batch_size": 4},
        }
        base["data"]["max_prompt_length"] = 64
        base["train"].update(lr=3e-3, progress=False, num_samples=0, save_every=0)
        cfg = load_config(RewardConfig, None, list(over), base=base)
        summary = train_reward(cfg)
        log = (tmp_path / "runs" / name / "reward" / "log.txt").read_text()
        return [r["loss"] for r in read_metrics(summary["run_dir"]) if r["split"] == "train"], log

    shared, log = run("shared")
    plain, plain_log = run("plain", "data.share_prompt=false")
    assert "prompt computed once" in log and "prompt computed once" not in plain_log
    assert len(shared) == 3 and shared[-1] != shared[0]
    assert shared == pytest.approx(plain, abs=1e-5)
