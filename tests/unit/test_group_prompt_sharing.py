"""A group's prompt computed once in the RL passes: rows that share a prompt run as one row
``[prompt | y1 | ... | yk]`` and give the same log-probs, values, entropy and gradients as the
plain layout (float rounding), in any row order; a planted leak between responses is caught."""

import copy

import pytest
import torch

from alignlab.models.policy import RLModels
from alignlab.models.presets import build_tiny
from alignlab.models.value import ValueHead
from alignlab.rollout.experience import collate_rollout
from alignlab.rollout.passes import policy_forward, rollout_pass
from alignlab.rollout.shared_prompt import shared_layout

GQA_EAGER = dict(num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)


def grouped_rollout(seed: int = 0, k: int = 3):
    """3 prompts × k responses of unequal lengths, one extra prompt with a single response, rows shuffled."""
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return torch.randint(3, 250, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    prompts, responses = [], []
    for _ in range(3):
        p = ids(2, 12)
        for _ in range(k):
            prompts.append(p)
            responses.append(ids(1, 9))
    prompts.append(ids(2, 12))
    responses.append(ids(1, 9))
    order = torch.randperm(len(prompts), generator=g).tolist()
    exp = collate_rollout([prompts[i] for i in order], [responses[i] for i in order], [True] * len(order), pad_id=0)
    return exp


def models_for(name: str, share: bool) -> RLModels:
    over = GQA_EAGER if name == "gqa-eager" else {}
    model, tok = build_tiny(seed=1, **over)
    if name == "gqa-eager":
        model.config._attn_implementation = "eager"
    head = ValueHead(model.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight, std=0.5, generator=torch.Generator().manual_seed(2))
    return RLModels(model, tok, ref_model=copy.deepcopy(model), value_head=head, share_prompt=share)


def test_layout_by_hand():
    exp = collate_rollout([[5, 6], [7], [5, 6]], [[10, 11], [30], [20]], [True, True, False], pad_id=0)
    layout = shared_layout(exp)
    # prompt [5 6] with rows 0 and 2; prompt [7] with row 1; T = 2 + 2 + 1 = 5
    assert layout.input_ids.tolist() == [[5, 6, 10, 11, 20], [7, 30, 0, 0, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    m = layout.attention_mask[0, 0].int().tolist()
    assert m[4] == [1, 1, 0, 0, 1]  # the second response sees the prompt and itself, not the first response
    assert m[3] == [1, 1, 1, 1, 0]
    # row b, column t: the state predicting response token t (flat g·T + col); padding reads the prompt's end
    assert layout.source.tolist() == [[1, 2], [5, 5], [1, 1]]
    assert layout.tokens == 10 < exp.input_ids.numel()  # 3 rows × (2 + 2) = 12


def test_no_shared_prompt_means_plain_layout():
    exp = collate_rollout([[5, 6], [7]], [[10], [30]], [True, True], pad_id=0)
    assert shared_layout(exp) is None


@pytest.mark.parametrize("name", ["tiny", "gqa-eager"])
def test_policy_forward_equal_and_gradients(name):
    exp = grouped_rollout()
    out = {}
    for share in (False, True):
        models = models_for(name, share)
        logprobs, values, _ = policy_forward(models, exp, temperature=0.7, with_values=True)
        mask = exp.response_mask
        weights = torch.linspace(-1, 1, mask.numel()).reshape(mask.shape)
        loss = (logprobs * mask * weights).sum() + (values * mask).pow(2).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in models.model.named_parameters()}
        grads["value_head"] = models.value_head.linear.weight.grad.clone()
        out[share] = (logprobs.detach() * mask, values.detach() * mask, grads)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-5)
    for key, want in out[False][2].items():
        scale = max(float(want.abs().max()), 1e-6)
        torch.testing.assert_close(out[True][2][key], want, rtol=1e-4, atol=1e-5 * scale, msg=key)


def test_rollout_pass_equal():
    exp = grouped_rollout(seed=3, k=4)
    got = {}
    for share in (False, True):
        e = copy.copy(exp)
        stats = rollout_pass(models_for("tiny", share), e, temperature=1.0, with_values=True, batch_size=8)
        got[share] = (e.old_logprobs * e.response_mask, e.ref_logprobs * e.response_mask, stats["entropy"])
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[True][1], got[False][1], rtol=1e-5, atol=1e-5)
    assert got[True][2] == pytest.approx(got[False][2], rel=1e-5)


def test_planted_leak_is_caught():
    """The test can fail: let every response see the others and the log-probs move."""
    exp = grouped_rollout(seed=4)
    models = models_for("tiny", True)
    plain = policy_forward(models_for("tiny", False), exp, temperature=1.0, with_values=False)[0].detach()
    import alignlab.rollout.shared_prompt as sp

    real = sp.shared_layout

    def leaky(e, pad_id=0):
        layout = real(e, pad_id)
        T = layout.input_ids.shape[1]
        layout.attention_mask = layout.attention_mask | torch.tril(torch.ones(T, T, dtype=torch.bool))
        return layout

    sp_passes = pytest.MonkeyPatch()
    sp_passes.setattr("alignlab.rollout.passes.shared_layout", leaky)
    try:
        leaked = policy_forward(models, exp, temperature=1.0, with_values=False)[0].detach()
    finally:
        sp_passes.undo()
    diff = ((leaked - plain) * exp.response_mask).abs().max()
    assert diff > 1e-3
