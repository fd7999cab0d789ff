"""The on-policy group update backpropagated chunk by chunk inside the rollout pass (so only one
chunk's activations are alive) gives the gradient, loss and stats of one backward through the
whole rollout, for every group loss, with dynamic sampling dropping groups, and whatever the
chunk size (rounded to whole groups)."""

import copy

import pytest
import torch

from alignlab.config import GRPOConfig, RLOOConfig, load_config
from alignlab.models.policy import RLModels
from alignlab.models.presets import build_tiny
from alignlab.rollout.experience import collate_rollout
from alignlab.rollout.passes import policy_forward, rollout_pass
from alignlab.trainers.group import GROUP_LOSSES, RLOO_LOSSES, grpo_targets, onpolicy_backward, rloo_targets

K = 4


def rollout():
    """4 prompts × K responses of unequal lengths (rows grouped), scores with one all-equal group."""
    g = torch.Generator().manual_seed(0)

    def ids(lo, hi):
        return torch.randint(3, 250, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    prompts, responses = [], []
    for _ in range(4):
        p = ids(3, 10)
        for _ in range(K):
            prompts.append(p)
            responses.append(ids(1, 9))
    exp = collate_rollout(prompts, responses, [True] * len(prompts), pad_id=0)
    exp.scores = torch.rand(len(exp), generator=g)
    exp.scores[4:8] = 0.5  # a group without signal: dynamic sampling drops it
    return exp


def models(share: bool) -> RLModels:
    model, tok = build_tiny(seed=1)
    return RLModels(model, tok, ref_model=copy.deepcopy(model), share_prompt=share)


CASES = [
    (RLOOConfig, "reinforce", []),
    (RLOOConfig, "clip", []),
    (GRPOConfig, "grpo", []),
    (GRPOConfig, "dr_grpo", []),
    (GRPOConfig, "dapo", ["dynamic_sampling=true", "beta=0.05"]),
    (GRPOConfig, "gspo", ["beta=0.05"]),
]


def whole(m: RLModels, exp, cfg, targets, loss_fn):
    """The reference: old/ref log-probs from a no-grad pass, targets, then one forward + backward."""
    rollout_pass(m, exp, temperature=0.8, with_values=False, batch_size=64)
    targets(exp, cfg)
    if exp.keep is not None:
        exp = exp.select(torch.nonzero(exp.keep).flatten())
    lp, _, _ = policy_forward(m, exp, temperature=0.8, with_values=False)
    loss, stats = loss_fn(lp, exp, exp.response_mask, cfg)
    loss.backward()
    return loss.detach(), stats


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("cls,name,extra", CASES, ids=[c[1] for c in CASES])
def test_chunked_onpolicy_backward_equals_one_backward(cls, name, extra, share):
    cfg = load_config(cls, None, [f"loss={name}", f"group_size={K}", "train.batch_size=4", *extra])
    targets = rloo_targets if cls is RLOOConfig else grpo_targets
    loss_fn = (RLOO_LOSSES if cls is RLOOConfig else GROUP_LOSSES)[name]

    ref_models = models(share)
    ref_loss, ref_stats = whole(ref_models, rollout(), cfg, targets, loss_fn)
    ref_grads = {n: p.grad for n, p in ref_models.model.named_parameters()}
    assert sum(float(g.abs().sum()) for g in ref_grads.values()) > 0

    for rows in (4, 6, 16):  # one group per chunk; 6 rounds down to one group; all in one chunk
        m = models(share)
        exp = rollout()
        rollout_pass(
            m, exp, temperature=0.8, with_values=False, batch_size=8, backward_rows=rows,
            backward=onpolicy_backward(cfg, targets, loss_fn), group=K,
        )  # fmt: skip
        assert exp.backpropagated
        targets(exp, cfg)
        if exp.keep is not None:
            assert int(exp.keep.sum()) == 12  # one group dropped
            exp = exp.select(torch.nonzero(exp.keep).flatten())
        with torch.no_grad():
            loss, stats = loss_fn(exp.old_logprobs, exp, exp.response_mask, cfg)
        assert float(loss) == pytest.approx(float(ref_loss), abs=1e-6)
        for key, value in ref_stats.items():
            assert float(stats[key]) == pytest.approx(float(value), abs=1e-6), key
        for n, p in m.model.named_parameters():
            torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-7, msg=f"{name} {rows} {n}")


def test_a_chunk_that_is_not_whole_groups_is_refused_by_rounding():
    """batch_size below the group size still runs whole groups (an RLOO advantage needs the group)."""
    cfg = load_config(RLOOConfig, None, [f"group_size={K}", "train.batch_size=4"])
    seen = []
    rollout_pass(
        models(False), rollout(), temperature=1.0, with_values=False, batch_size=8, backward_rows=3,
        backward=lambda exp, rows, lp: seen.append((rows.start, rows.stop)), group=cfg.group_size,
    )  # fmt: skip
    assert seen == [(0, 4), (4, 8), (8, 12), (12, 16)]
