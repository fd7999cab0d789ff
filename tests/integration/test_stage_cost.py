"""A stage's COMPLETE cost holds the tokens its models processed and their estimated FLOPs."""

import json
from pathlib import Path


def test_sft_cost_counts_trained_and_forward_tokens(tiny_sft_config):
    from alignlab.models import flops
    from alignlab.trainers.sft import train_sft

    start = flops.snapshot()
    summary = train_sft(tiny_sft_config())
    done = flops.since(start)
    cost = json.loads((Path(summary["run_dir"]) / "COMPLETE").read_text())["cost"]
    assert cost["trained_tokens"] == done["trained_tokens"] > 0  # 8 steps of 4 examples, with gradient
    assert cost["forward_tokens"] == done["forward_tokens"] > 0  # the held-out evaluation, without
    assert cost["flops"] == float(f"{done['flops']:.4g}") > 0
    assert cost["wall_s"] > 0 and cost["peak_rss_mb"] > 0
