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
    from alignlab.config import load_config, SFTConfig

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
