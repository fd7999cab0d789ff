"""Rollout pieces without a model: reward sources, the truncation penalty, engine choice, batch layout, reward normaliser."""

import math
import sys
import textwrap

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.rollout.experience import collate_rollout
from alignlab.rollout.rewards import (
    FunctionReward,
    RunningMoments,
    apply_truncation_penalty,
    char_fraction,
    contains_word,
    house_style,
    load_reward_source,
    parse_kwargs,
)
from alignlab.rollout.vllm_engine import choose_engine


# ----------------------------------------------------------------------------- built-in rules
def test_builtin_rules_by_hand():
    assert house_style(
        [""] * 4, ["Sure. Hope this helps!", "hope this helps! more", "nothing", "  Hope this helps!  "]
    ) == [1.0, 0.5, 0.0, 1.0]
    assert contains_word(["", ""], ["Thanks a lot", "thanksgiving"], word="thanks") == [1.0, 0.0]
    # "abca": 2 of 4 characters are 'a'; "" -> 0; "xyz" -> 0
    assert char_fraction(["", "", ""], ["abca", "", "xyz"], chars="a") == [0.5, 0.0, 0.0]
    assert char_fraction([""], ["ab c"], chars="abc") == [0.75]


def test_truncation_penalty_only_hits_responses_without_eos():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    finished = torch.tensor([True, False, True, False])
    assert apply_truncation_penalty(scores, finished, 0.5).tolist() == [1.0, 1.5, 3.0, 3.5]
    assert apply_truncation_penalty(scores, finished, 0.0).tolist() == scores.tolist()


# ----------------------------------------------------------------------------- loading
@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent("""
        NOT_A_FUNCTION = 3

        def length_score(prompts, responses, scale=1.0):
            return [scale * len(r) for r in responses]

        def with_meta(prompts, responses, meta, finished):
            return [float(m.get("bonus", 0)) + float(f) for m, f in zip(meta, finished)]

        def wrong_count(prompts, responses):
            return [1.0]

        def not_finite(prompts, responses):
            return [float("nan")] * len(responses)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    sys.modules.pop("my_rewards", None)


def _score(source, responses, finished=None, meta=None):
    n = len(responses)
    return source.score(["q"] * n, responses, finished=finished or [True] * n, meta=meta or [{}] * n).tolist()


def test_python_function_source_with_kwargs_and_optional_inputs(reward_module):
    src = load_reward_source(f"{reward_module}:length_score", ["scale=2"])
    assert _score(src, ["ab", "abcd"]) == [4.0, 8.0]
    src = load_reward_source(f"{reward_module}:with_meta")
    assert _score(src, ["x", "y"], finished=[True, False], meta=[{"bonus": 2}, {}]) == [3.0, 0.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:score", "'no_such_module_xyz:score': module 'no_such_module_xyz' not found"),
        ("my_rewards:lenght_score", "has no function 'lenght_score'; did you mean 'my_rewards:length_score'"),
        ("my_rewards:NOT_A_FUNCTION", "'NOT_A_FUNCTION' in 'my_rewards' is a int, not a function"),
        ("house_styel", "did you mean 'house_style'"),
        ("gold:sentimnt", "did you mean 'sentiment'"),
    ],
)
def test_loading_errors_name_the_source(reward_module, spec, message):
    with pytest.raises(ConfigError) as e:
        load_reward_source(spec)
    assert message in str(e.value)


def test_bad_kwargs_and_bad_return_values_are_config_errors(reward_module):
    with pytest.raises(ConfigError, match="do not fit reward function 'my_rewards:length_score'.*scale"):
        load_reward_source("my_rewards:length_score", ["sclae=2"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_kwargs(["scale"])
    with pytest.raises(ConfigError, match="'my_rewards:wrong_count' returned 1 scores for 2 responses"):
        _score(load_reward_source("my_rewards:wrong_count"), ["a", "b"])
    with pytest.raises(ConfigError, match="non-finite"):
        _score(load_reward_source("my_rewards:not_finite"), ["a"])


def test_folder_without_reward_head_is_refused(tmp_path):
    from alignlab.errors import AlignlabError

    with pytest.raises(AlignlabError, match="reward"):
        load_reward_source(str(tmp_path))


def test_function_reward_passes_last_user_message():
    from alignlab.data.records import Message

    seen = {}

    def fn(prompts, responses):
        seen["prompts"] = prompts
        return [0.0] * len(responses)

    prompt = (
        Message("system", "be kind"),
        Message("user", "first"),
        Message("assistant", "ok"),
        Message("user", "second"),
    )
    FunctionReward(fn, "fn").score([prompt, "plain"], ["a", "b"], finished=[True, True], meta=[{}, {}])
    assert seen["prompts"] == ["second", "plain"]


# ----------------------------------------------------------------------------- engines
def test_engine_choice():
    assert choose_engine("auto", vllm_available=True, gpu=True) == "vllm"
    assert choose_engine("auto", vllm_available=True, gpu=False) == "transformers"
    assert choose_engine("auto", vllm_available=False, gpu=True) == "transformers"
    assert choose_engine("transformers", vllm_available=True, gpu=True) == "transformers"
    assert choose_engine("vllm", vllm_available=True, gpu=True) == "vllm"
    with pytest.raises(ConfigError, match="needs the vllm package"):
        choose_engine("vllm", vllm_available=False, gpu=True)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        choose_engine("vllm", vllm_available=True, gpu=False)
    with pytest.raises(ConfigError, match="did you mean 'vllm'"):
        choose_engine("vlm", vllm_available=True, gpu=True)


# ----------------------------------------------------------------------------- batch layout
def test_collate_rollout_layout():
    exp = collate_rollout([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], [False, True], pad_id=0)
    assert exp.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert exp.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert exp.response_ids.tolist() == [[1, 2, 0], [3, 4, 9]]
    assert exp.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert exp.input_ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    # positions count real tokens only: the padded row's prompt starts at position 0
    assert exp.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert exp.finished.tolist() == [False, True]
    sub = exp.select(torch.tensor([1]))
    assert sub.response_ids.tolist() == [[3, 4, 9]] and sub.prompt_width == 3
    with pytest.raises(ValueError, match="empty response"):
        collate_rollout([[1]], [[]], [False], pad_id=0)


def test_minibatches_cover_every_row_once():
    exp = collate_rollout([[1]] * 5, [[i + 1] for i in range(5)], [True] * 5, pad_id=0)
    mbs = exp.minibatches(2, torch.Generator().manual_seed(0))
    assert [len(m) for m in mbs] == [2, 2, 1]
    assert sorted(int(x) for m in mbs for x in m.response_ids[:, 0]) == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- reward normaliser
def test_running_moments_match_the_concatenation_and_round_trip():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=g) * 3 + 1 for n in (1, 5, 8)]
    m = RunningMoments()
    assert m.std == 1.0  # nothing seen yet: no scaling
    for b in batches:
        m.update(b)
    allx = torch.cat(batches).double()
    assert math.isclose(m.mean, float(allx.mean()), rel_tol=1e-12)
    assert math.isclose(m.std, float(allx.std(unbiased=True)), rel_tol=1e-12)
    m2 = RunningMoments()
    m2.load_state_dict(m.state_dict())
    x = torch.tensor([0.0, 2.0])
    assert torch.equal(m2.normalize(x), m.normalize(x))


def test_vllm_responses_never_train_on_an_invented_eos():
    from alignlab.rollout.vllm_engine import response_tokens

    EOS = 2
    assert response_tokens([5, 6, EOS], "stop", None, EOS) == ([5, 6, EOS], True)  # EOS sampled and kept
    assert response_tokens([5, 6], "stop", 9, EOS) == ([5, 6, 9], True)  # a stop token vLLM left out: it was sampled
    assert response_tokens([5, 6], "stop", "###", EOS) == ([5, 6], False)  # a stop string: no EOS was sampled
    assert response_tokens([5, 6], "length", None, EOS) == ([5, 6], False)
    assert response_tokens([5, EOS, 7], "length", None, EOS) == ([5, EOS], True)
