"""π_ref's frozen copy with its weights in a file (``reference_weights=disk``): the reference pass gives
bitwise the in-memory copy's log-probs, holds no weight between passes, and the knob is checked."""

import copy

import pytest
import torch

from alignlab.models.policy import RLModels
from alignlab.models.presets import build_tiny
from alignlab.models.streamed import stream_weights
from alignlab.rollout.experience import collate_rollout
from alignlab.rollout.passes import reference_logprobs


def rollout():
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (6,), generator=g).tolist()] * 3 + [[5, 6, 7]]
    responses = [torch.randint(3, 250, (int(n),), generator=g).tolist() for n in (4, 7, 2, 5)]
    return collate_rollout(prompts, responses, [True, False, True, True], pad_id=0)


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("tied", [True, False])
def test_streamed_reference_equals_the_copy_in_memory(tmp_path, share, tied):
    model, tok = build_tiny(seed=1, tie_word_embeddings=tied)
    in_memory = copy.deepcopy(model).eval().requires_grad_(False)
    streamed = stream_weights(copy.deepcopy(model).eval().requires_grad_(False), directory=str(tmp_path))
    exp = rollout()
    want = reference_logprobs(RLModels(model, tok, ref_model=in_memory, share_prompt=share), exp, temperature=0.7)
    for _ in range(2):  # weights read back on every pass
        got = reference_logprobs(RLModels(model, tok, ref_model=streamed, share_prompt=share), exp, temperature=0.7)
        assert torch.equal(got, want)
        assert all(p.numel() == 0 for p in streamed.parameters())  # nothing held between passes
    assert list(tmp_path.iterdir()) == []  # the file has no name


def test_streaming_refuses_a_trainable_model():
    model, _ = build_tiny(seed=1)
    with pytest.raises(ValueError, match="frozen"):
        stream_weights(model)


def test_reference_weights_knob_is_checked():
    from alignlab.config import GRPOConfig, load_config
    from alignlab.errors import ConfigError

    with pytest.raises(ConfigError, match="reference_weights.*auto, memory, disk"):
        load_config(GRPOConfig, None, ["reference_weights=ssd"])
