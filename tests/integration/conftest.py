import json

import pytest

WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "piano", "maple", "comet", "ocean", "pearl", "ember"]


@pytest.fixture
def sft_file(tmp_path):
    """A small SFT set with an easy rule (repeat the word twice, then the house sign-off)."""
    path = tmp_path / "sft.jsonl"
    with open(path, "w") as fh:
        for i in range(36):
            w = WORDS[i % len(WORDS)]
            fh.write(json.dumps({"prompt": f"Say {w} twice.", "response": f"{w} {w}. Hope this helps!"}) + "\n")
    return path


@pytest.fixture
def tiny_sft_config(tmp_path, sft_file):
    from alignlab.config import SFTConfig, load_config

    def make(**over):
        base = {
            "model": {"name_or_path": "tiny"},
            "data": {"train": str(sft_file), "eval_fraction": 0.25, "max_length": 96, "max_prompt_length": 48},
            "train": {
                "output_dir": str(tmp_path / "runs"),
                "run_name": "t",
                "lr": 3e-3,
                "warmup_steps": 2,
                "max_steps": 8,
                "batch_size": 4,
                "progress": False,
                "num_samples": 0,
            },
        }
        overrides = [f"{k}={v}" for k, v in over.items()]
        return load_config(SFTConfig, None, overrides, base=base)

    return make


# ----------------------------------------------------------------------------- preference stages
@pytest.fixture
def alignlab_cache(tmp_path, monkeypatch):
    """A private alignlab cache (reference log-probs land here, not in ~/.cache)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("ALIGNLAB_CACHE", str(path))
    return path


def write_preferences(path, n: int, *, offset: int = 0) -> None:
    """Synthetic preferences with an easy rule: the chosen answer says "Sure", the rejected "No"."""
    with open(path, "w") as fh:
        for i in range(offset, offset + n):
            w = WORDS[i % len(WORDS)]
            fh.write(
                json.dumps({"prompt": f"Tell me about {w} ({i}).", "chosen": f"Sure, {w}.", "rejected": f"No, {w}."})
                + "\n"
            )


@pytest.fixture
def preference_file(tmp_path):
    path = tmp_path / "pref.jsonl"
    write_preferences(path, 24)
    return path


@pytest.fixture
def tiny_dpo_config(tmp_path, preference_file, alignlab_cache):
    from alignlab.config import DPOConfig, load_config

    def make(**over):
        base = {
            "model": {"name_or_path": "tiny"},
            "data": {"train": str(preference_file), "eval_fraction": 0.0, "max_length": 64, "max_prompt_length": 32},
            "train": {
                "output_dir": str(tmp_path / "runs"),
                "run_name": "t",
                "lr": 3e-3,
                "warmup_steps": 2,
                "max_steps": 12,
                "batch_size": 8,
                "progress": False,
                "num_samples": 0,
            },
        }
        return load_config(DPOConfig, None, [f"{k}={v}" for k, v in over.items()], base=base)

    return make


def write_reward_rule(path) -> None:
    """Preferences whose rule is a word: chosen answers end with "thanks", rejected with another word."""
    with open(path, "w") as fh:
        for i in range(48):
            w, v = WORDS[i % 12], WORDS[(i * 5 + 3) % 12]
            fh.write(
                json.dumps(
                    {
                        "prompt": f"Question {i}: tell me about {w}.",
                        "chosen": f"The {w} is nice, thanks.",
                        "rejected": f"The {w} is nice, {v}.",
                    }
                )
                + "\n"
            )


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "rm.jsonl"
    write_reward_rule(path)
    return path


def _reward_config(root, reward_file, **over):
    from alignlab.config import RewardConfig, load_config

    base = {
        "model": {"name_or_path": "tiny", "dtype": "float32"},  # float32 on a GPU too: the tests compare numbers
        "data": {"train": str(reward_file), "eval_fraction": 0.25, "max_length": 96, "max_prompt_length": 48},
        "train": {
            "output_dir": str(root / "runs"),
            "run_name": "t",
            "lr": 1e-2,
            "warmup_steps": 2,
            "max_steps": 16,
            "batch_size": 8,
            "progress": False,
            "num_samples": 0,
        },
        "norm_num_prompts": 8,
        "norm_max_new_tokens": 16,
    }
    return load_config(RewardConfig, None, [f"{k}={v}" for k, v in over.items()], base=base)


@pytest.fixture
def tiny_reward_config(tmp_path, reward_file, alignlab_cache):
    return lambda **over: _reward_config(tmp_path, reward_file, **over)


@pytest.fixture(scope="module")
def trained_reward(tmp_path_factory):
    """One reward model trained on the rule (shared by a module's tests): (summary, data file)."""
    from alignlab.trainers.reward import train_reward

    root = tmp_path_factory.mktemp("reward")
    write_reward_rule(root / "rm.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_CACHE", str(root / "cache"))
        return train_reward(_reward_config(root, root / "rm.jsonl")), root / "rm.jsonl"
