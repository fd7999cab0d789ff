"""Sampling k responses per prompt runs each distinct prompt's prefill once (rollout.generate.shared_prefill):
the same tokens and log-probs as the unshared call, greedy and seeded, with left padding, groups cut by
the engine's batch size and a LoRA policy; the prefill really runs on the distinct prompts only."""

import pytest
import torch

from alignlab.models.logprobs import trunk_and_head
from alignlab.models.presets import build_tiny
from alignlab.rollout.generate import SamplingParams, TransformersEngine


def group_prompts(k: int = 3, n: int = 4, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = torch.randint(3, 250, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
        out += [p] * k
    return out + [[5, 6, 7]]  # and one prompt of its own


def lora_model():
    from peft import LoraConfig, get_peft_model

    model, tok = build_tiny(seed=1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return model, tok


@pytest.mark.parametrize(
    "temperature, which, batch_size",  # batch 5: a group of 3 is cut between two calls
    [(0.0, "plain", 16), (1.0, "plain", 5), (0.0, "lora", 5), (1.0, "lora", 16)],
)
def test_same_tokens_and_logprobs(temperature, which, batch_size):
    model, tok = build_tiny(seed=1) if which == "plain" else lora_model()
    prompts = group_prompts()
    params = SamplingParams(max_new_tokens=10, temperature=temperature, seed=3, logprobs=True)
    runs = [
        TransformersEngine(model, tok, batch_size=batch_size, share_prefill=share).generate(prompts, params)
        for share in (False, True)
    ]
    for plain, shared in zip(*runs):
        assert shared.response_ids == plain.response_ids
        assert shared.finished == plain.finished
        torch.testing.assert_close(torch.tensor(shared.logprobs), torch.tensor(plain.logprobs), atol=1e-5, rtol=1e-5)


def test_prefill_runs_on_distinct_prompts_only():
    model, tok = build_tiny(seed=1)
    trunk, _ = trunk_and_head(model)
    seen = []
    handle = trunk.register_forward_pre_hook(
        lambda m, args, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    prompts = group_prompts(k=4, n=3)  # 13 rows, 4 distinct prompts; widest prompt: W columns
    width = max(len(p) for p in prompts)
    try:
        TransformersEngine(model, tok, batch_size=16).generate(prompts, SamplingParams(max_new_tokens=3, seed=0))
        assert seen[0] == (4, width - 1)  # the distinct prompts, all but their last column
        assert seen[1] == (13, 1)  # the decoding loop then runs the last prompt column of every row
        seen.clear()
        TransformersEngine(model, tok, batch_size=16, share_prefill=False).generate(
            prompts, SamplingParams(max_new_tokens=3, seed=0)
        )
        assert seen[0] == (13, width)
    finally:
        handle.remove()
