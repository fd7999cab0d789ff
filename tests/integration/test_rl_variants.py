"""The RL variants people now use, through the real trainers on the tiny model: each learns the tiny
profile's rule reward (REINFORCE++, RLOO clip, DAPO, GSPO), and their switches do what they say
(DAPO's dynamic sampling, target_kl's early stop, KL in the loss, the entropy bonus, RLOO's
importance ratio on stale minibatches)."""

import pytest
import torch
from integration.test_rl import _mean, tiny_cfg, train_rows

from alignlab.errors import ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _train(stage, cfg):
    from alignlab.trainers.group import train_grpo, train_rloo
    from alignlab.trainers.ppo import train_ppo

    return {"ppo": train_ppo, "rloo": train_rloo, "grpo": train_grpo}[stage](cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage,overrides",
    [
        ("ppo", ["advantage_estimator=reinforce_pp", "value_model=none"]),
        ("rloo", ["loss=clip", "mini_batch_size=16"]),
        ("grpo", ["loss=dapo"]),
        ("grpo", ["loss=gspo"]),
    ],
)
def test_variant_learns_the_rule_reward(tmp_path, stage, overrides):
    summary = _train(stage, tiny_cfg(stage, tmp_path, *overrides))
    rows = train_rows(summary)
    first, last = _mean([r["score"] for r in rows[:5]]), _mean([r["score"] for r in rows[-5:]])
    assert first < 0.2 and last > first + 0.15, (overrides, first, last)
    if "value_model=none" in overrides:
        assert not (tmp_path / "runs" / "tiny" / "ppo" / "value.safetensors").exists()  # REINFORCE++ has no critic


def test_dapo_dynamic_sampling_drops_groups_with_one_score(tmp_path):
    # a constant reward: every group's scores are equal, so DAPO keeps none and takes no step
    cfg = tiny_cfg(
        "grpo", tmp_path, "loss=dapo", "train.max_steps=1", "reward.source=contains_word", "reward.kwargs=[word=zzzzzz]"
    )
    rows = train_rows(_train("grpo", cfg))
    assert rows[0]["groups_kept"] == 0.0
    assert rows[0]["loss"] != rows[0]["loss"]  # NaN: no minibatch was trained on


def test_target_kl_stops_the_epochs_early(tmp_path):
    cfg = tiny_cfg(
        "ppo", tmp_path, "train.max_steps=1", "ppo_epochs=8", "mini_batch_size=4", "target_kl=1e-9", "train.lr=0.01"
    )
    rows = train_rows(_train("ppo", cfg))
    assert rows[0]["early_stop_epoch"] == 1.0


def test_kl_in_the_loss_and_the_entropy_bonus_enter_the_loss(tmp_path):
    one_update = ["train.max_steps=1", "ppo_epochs=1", "mini_batch_size=16", "kl_penalty=loss"]
    plain = train_rows(_train("ppo", tiny_cfg("ppo", tmp_path, *one_update, "train.run_name=a")))[0]
    bonus = train_rows(_train("ppo", tiny_cfg("ppo", tmp_path, *one_update, "entropy_coef=0.01", "train.run_name=b")))[
        0
    ]
    assert "policy/kl_loss" in plain  # β·k2 is in the loss, not in the rewards
    # same rollout (same seed), one update: the loss differs by exactly −c·H
    assert bonus["loss"] == pytest.approx(plain["loss"] - 0.01 * bonus["entropy"], abs=1e-5)


def test_rloo_reinforce_weights_a_stale_minibatch_by_its_sequence_ratio():
    """The wiring passes the rollout's log-probs, so the second minibatch (sampled by θ₀, trained at θ₁)
    gets the importance weight exp(Σ log π_θ₁ − Σ log π_θ₀), not the stale gradient."""
    from types import SimpleNamespace

    from alignlab.trainers.group import RLOO_LOSSES

    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)  # (B, R) at θ₁
    old = torch.tensor([[-1.5, -2.0], [-0.5, -1.0]])  # at θ₀, the sampler
    mask = torch.ones(2, 2)
    mb = SimpleNamespace(old_logprobs=old, advantages=torch.tensor([1.0, -1.0]))
    loss, _ = RLOO_LOSSES["reinforce"](logprobs, mb, mask, None)
    loss.backward()
    rho = torch.exp(logprobs.detach().sum(-1) - old.sum(-1))  # (B,) sequence ratios
    want = -(rho * mb.advantages)[:, None].expand(2, 2) / 2  # d/dlogπ of −mean_i ρ_i A_i Σ_t log π
    assert torch.allclose(logprobs.grad, want, atol=1e-6)
    assert not torch.allclose(rho, torch.ones(2))  # the ratio is not 1: the check is not vacuous


def test_rl_stages_refuse_nucleus_sampling():
    from alignlab.config import PPOConfig, load_config
    from alignlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"top_p.*truncated"):
        load_config(PPOConfig, None, ["rollout.top_p=0.9"])


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_rl_stages_write_their_rollouts_token_by_token(tmp_path, stage):
    from alignlab.runs import ROLLOUT_FIELDS, StageFolder

    summary = _train(stage, tiny_cfg(stage, tmp_path, "train.max_steps=2", "rollout.save_rows=3"))
    folder = StageFolder(__import__("pathlib").Path(summary["run_dir"]))
    assert folder.rollout_steps() == [1, 2]
    rows = folder.read_rollout(2)
    assert len(rows) == 3 and set(rows[0]) == set(ROLLOUT_FIELDS)
    for r in rows:
        n = len(r["tokens"])
        assert n == len(r["logprobs"]) == len(r["ref_logprobs"]) == len(r["kl"]) == len(r["advantages"]) > 0
        assert all(
            isinstance(t, str) for t in r["tokens"]
        )  # the tiny byte-level tokenizer's pieces need not be valid UTF-8 alone
        assert all(abs(k - (a - b)) < 1e-5 for k, a, b in zip(r["kl"], r["logprobs"], r["ref_logprobs"]))  # k1


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_on_policy_update_reuses_the_rollout_pass_and_trains_the_same(tmp_path, monkeypatch, stage):
    """One epoch over one minibatch (the tiny profile's group stages): the rollout pass's log-probs, with
    their graph, are the update's; no second training forward runs, and the run equals the two-pass
    run (old log-probs from a no-grad pass, then a training forward over the same tokens)."""
    from alignlab.trainers import group
    from alignlab.trainers.rl import RLContext

    calls = []
    forward = RLContext.policy_forward
    monkeypatch.setattr(RLContext, "policy_forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    args = ("train.max_steps=3", "ppo_epochs=1", "mini_batch_size=32")
    live = train_rows(_train(stage, tiny_cfg(stage, tmp_path / "live", *args)))
    assert calls == []
    monkeypatch.setattr(group, "on_policy", lambda cfg: False)
    two_pass = train_rows(_train(stage, tiny_cfg(stage, tmp_path / "two", *args)))
    assert len(calls) == 3  # one training forward per step on the two-pass path
    for a, b in zip(live, two_pass):
        for key in ("loss", "score", "kl", "entropy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (key, a[key], b[key])
    assert live[-1]["loss"] != live[0]["loss"]


def test_bfloat16_sampling_logs_the_samplers_kl_to_the_policy(tmp_path):
    """rollout.sampling_dtype=bfloat16: responses come from a bfloat16 copy; every rollout logs
    sampler/kl, the mean of log π_bf16 − log π over its tokens, which is small but not 0."""
    rows = train_rows(
        _train("grpo", tiny_cfg("grpo", tmp_path, "train.max_steps=2", "rollout.sampling_dtype=bfloat16"))
    )
    kls = [r["sampler/kl"] for r in rows]
    assert len(kls) == 2 and all(0 < abs(k) < 0.05 for k in kls), kls
    plain = train_rows(_train("grpo", tiny_cfg("grpo", tmp_path / "plain", "train.max_steps=1")))
    assert "sampler/kl" not in plain[0]
    with pytest.raises(ConfigError, match="sampling_dtype"):
        tiny_cfg("grpo", tmp_path, "rollout.sampling_dtype=bf16")
