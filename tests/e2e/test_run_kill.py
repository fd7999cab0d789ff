"""`alignlab run --profile tiny` killed with SIGKILL in the middle of PPO training, then run again:
the earlier stages are skipped as complete, PPO continues from its newest checkpoint (not from step
0), and the interrupted stage ends exactly as in a run that was never killed: the same metrics
(timings aside), the same final weights, the same samples."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# Every run of this test: PPO checkpoints every 5 of its 30 rollouts; the group stages after it are
# cut short (they are not what is tested, only what `alignlab run` does after a resumed stage).
OVERRIDES = ["train.progress=false", "ppo.train.save_every=5", "rloo.train.max_steps=3", "grpo.train.max_steps=3"]
TIMING = ("time/", "tokens_per_s", "gen_tokens_per_s", "gen_limit_frac")  # wall-clock figures


def command():
    return [sys.executable, "-m", "alignlab", "run", "--profile", "tiny", *OVERRIDES]


def env():
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def run_to_the_end(cwd):
    r = subprocess.run(command(), cwd=cwd, capture_output=True, text=True, timeout=900, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def kill_after_first_checkpoint(cwd, stage="ppo"):
    """Start the run; SIGKILL its process group as soon as ``stage`` has a complete checkpoint."""
    ckpts = cwd / "runs" / "tiny" / stage / "checkpoints"
    with open(cwd / "killed.log", "w") as out:
        proc = subprocess.Popen(
            command(), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True
        )
        try:
            deadline = time.monotonic() + 900
            while not any((p / "COMPLETE").is_file() for p in ckpts.glob("step-*")):
                assert proc.poll() is None, (cwd / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def metrics(stage_dir):
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in rows]


def first_difference(a, b):
    """Where two metrics lists first differ: (row, key, value here, value there), else None."""
    if len(a) != len(b):
        return ("rows", len(a), len(b))
    for i, (x, y) in enumerate(zip(a, b)):
        for k in sorted(set(x) | set(y)):
            if x.get(k) != y.get(k):
                return (i, k, x.get(k), y.get(k))
    return None


def weights(final_dir):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(final_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    assert out, f"no weights in {final_dir}"
    return out


@pytest.mark.slow
def test_a_run_killed_mid_ppo_continues_that_stage_and_ends_as_a_straight_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    run_to_the_end(straight)

    kill_after_first_checkpoint(killed)
    ppo = killed / "runs" / "tiny" / "ppo"
    assert not (ppo / "COMPLETE").exists()  # killed mid-stage, not after it
    for stage in ("sft", "label", "reward", "dpo"):
        assert (killed / "runs" / "tiny" / stage / "COMPLETE").is_file()
    saved = sorted(p.name for p in (ppo / "checkpoints").glob("step-*") if (p / "COMPLETE").is_file())
    steps_before = len([r for r in metrics(ppo) if r["split"] == "train"])

    again = run_to_the_end(killed)
    for stage in ("sft", "label", "reward", "dpo"):
        assert f"] {stage}: " in again.stdout and f"tiny/{stage} is complete; skipping" in again.stdout, again.stdout
    assert "ppo: continuing the interrupted stage" in again.stdout
    log = (ppo / "log.txt").read_text()
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and saved[-1] in resumed[0], (saved, resumed)
    step = int(saved[-1].split("-")[-1])
    assert 0 < step < 30 and steps_before >= step  # it had trained past a checkpoint, and did not start again

    # the stages before it, run in another process than the straight run's, gave the same models:
    # a difference there is run-to-run nondeterminism, not the resume, and is named as such
    for stage in ("sft", "reward", "dpo"):
        here, there = killed / "runs" / "tiny" / stage, straight / "runs" / "tiny" / stage
        assert first_difference(metrics(here), metrics(there)) is None, (
            stage,
            first_difference(metrics(here), metrics(there)),
        )
        a, b = weights(here / "final"), weights(there / "final")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{stage}: weights differ"

    # resume is exact: the interrupted stage's outputs equal the straight run's
    ref = straight / "runs" / "tiny" / "ppo"
    rows_before = [r for r in metrics(ppo) if r.get("step", 0) <= step]
    assert first_difference(rows_before, metrics(ref)[: len(rows_before)]) is None, (
        "before the kill (not the resume)",
        first_difference(rows_before, metrics(ref)[: len(rows_before)]),
    )
    assert first_difference(metrics(ppo), metrics(ref)) is None, (
        "after the resume",
        first_difference(metrics(ppo), metrics(ref)),
    )
    assert any(k.startswith("monitor/") for r in metrics(ppo) for k in r)  # the monitors' state resumed too
    a, b = weights(ppo / "final"), weights(ref / "final")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (ppo / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text()
    assert (killed / "runs" / "tiny" / "report" / "COMPLETE").is_file()  # and the run went on to the end
