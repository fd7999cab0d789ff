"""Test helpers for the web app: a run folder written by hand, a fake model backend, a live server.

Shared by ``tests/integration/test_web*.py`` and ``tests/browser``; importable without torch. A
test that wants a real run points :func:`serve` at the output of ``alignlab run --profile tiny``
instead of :func:`make_demo_run`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from alignlab import runs

XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
"""Model text that must show up as text, never run."""


def _metrics(stage: str, steps: int) -> list[dict]:
    rows = []
    for t in range(1, steps + 1):
        f = 1.0 / t
        if stage == "sft":
            rows.append({"step": t, "split": "train", "loss": 2.5 * f + 1.0, "lr": 1e-4})
            if t % 5 == 0:
                rows.append(
                    {
                        "step": t,
                        "split": "eval",
                        "loss": 2.6 * f + 1.1,
                        "nll": 2.6 * f + 1.1,
                    }
                )
        elif stage == "reward":
            rows.append(
                {
                    "step": t,
                    "split": "train",
                    "loss": 0.69 * f + 0.3,
                    "rewards/accuracy": 0.5 + 0.4 * (1 - f),
                }
            )
        elif stage == "dpo":
            rows.append(
                {
                    "step": t,
                    "split": "train",
                    "loss": 0.69 * f + 0.2,
                    "rewards/margin": 2 * (1 - f),
                    "rewards/accuracy": 0.5 + 0.45 * (1 - f),
                }
            )
        elif stage == "ppo":
            rows.append(
                {
                    "step": t,
                    "split": "train",
                    "score": 1.5 * (1 - f),
                    "kl": 0.8 * (1 - f),
                    "beta": 0.05,
                    "value/loss": 0.5 * f,
                    "policy/clipfrac": 0.1 * f,
                }
            )
    return rows


def rollout_rows(step: int, n: int = 4) -> list[dict]:
    rows = []
    for i in range(n):
        tokens = [
            "Sure",
            ",",
            " here",
            " is",
            " a",
            " tip",
            ".",
            " Hope",
            " this",
            " helps",
            "!",
        ]
        if i == 0:
            tokens = [*tokens, XSS]
        k = len(tokens)
        rows.append(
            {
                "step": step,
                "prompt": f"How do I boil an egg? (step {step}, sample {i})",
                "response": "".join(tokens),
                "tokens": tokens,
                "logprobs": [-0.2 - 0.3 * ((j + i) % 4) for j in range(k)],
                "ref_logprobs": [-0.3 - 0.2 * ((j + i) % 3) for j in range(k)],
                "kl": [0.05 * ((j * (i + 1)) % 5) - 0.05 for j in range(k)],
                "advantages": [0.4 - 0.1 * j + 0.2 * i for j in range(k)],
                "score": 0.25 * i + 0.1 * step,
                "reward": 0.25 * i + 0.1 * step - 0.02,
            }
        )
    return rows


def make_demo_run(root: str | Path, name: str = "demo", *, steps: int = 20, complete: bool = True) -> Path:
    """A run folder as the pipeline writes it: sft, reward, dpo, ppo (with rollouts), eval."""
    path = Path(root) / name
    stages = ["sft", "reward", "dpo", "ppo"]
    runs.write_manifest(path, profile="tiny", stages=[*stages, "eval"])
    for s in stages:
        sf = runs.StageFolder(path / s)
        runs.atomic_write_text(sf.config, f"# {s} stage\ntrain:\n  steps: {steps}\n  lr: 1e-4\nbeta: 0.1\n")
        runs.atomic_write_jsonl(sf.metrics, _metrics(s, steps))
        sf.write_samples(
            [
                {
                    "prompt": "How do I boil an egg?",
                    "response": f"[{s}] Boil it for 8 minutes. Hope this helps!",
                },
                {"prompt": "What is a roux?", "response": XSS},
            ]
        )
        if s == "ppo":
            for step in (1, 2, 3):
                runs.atomic_write_jsonl(sf.rollout_path(step), rollout_rows(step))
        if complete or s != "ppo":
            sf.write_complete({"steps": steps})
    runs.atomic_write_bytes(path / "report" / "loss.png", tiny_png())
    runs.atomic_write_json(
        path / "eval" / "eval.json",
        {  # the parts of alignlab.eval's schema 1 that the simulator reads
            "schema": 1,
            "baseline": "sft",
            "kl_estimator": "k3",
            "frontier": {
                "points": [
                    {"name": "sft", "kl": 0.0, "gold": 0.2},
                    {"name": "dpo", "kl": 0.9, "gold": 0.9},
                    {"name": "ppo", "kl": 1.4, "gold": 1.2},
                ],
                "checkpoints": [],
            },
        },
    )
    return path


def tiny_png(width: int = 240, height: int = 120) -> bytes:
    """A valid RGB PNG (a falling curve on white) for the report folder, written without an imaging library."""
    rows = []
    for y in range(height):
        row = bytearray([0])  # filter: none
        for x in range(width):
            curve = int(height * (0.15 + 0.7 * (1 - 1 / (1 + x / 30))))
            on = abs(y - curve) <= 1
            row += bytes((45, 91, 138) if on else (255, 255, 255))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


class FakeBackend:
    """Fixed responses in place of π_ref and a transparent reward: no model anywhere.

    ``sample`` cycles through :attr:`responses`; component ``gold:length`` scores a response by its
    number of words / 10, ``gold:polite`` by whether it says "please" or "helps". ``answer`` echoes the
    prompt per policy, escaping nothing (the page must).
    """

    responses: ClassVar[list[str]] = [
        "Boil it.",
        "Put the egg in boiling water for eight minutes, then cool it. Hope this helps!",
        "Eggs are great. Please boil them gently for about seven to nine minutes and peel under cold water.",
        "I don't know.",
        XSS,
        "Place eggs in a pot, cover with cold water, bring to a boil, simmer nine minutes, then ice bath. Hope this helps!",
    ]

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def components(self, run: str) -> list[dict]:
        return [
            {"id": "gold:length", "label": "gold: length"},
            {"id": "gold:polite", "label": "gold: polite"},
        ]

    def sample(self, run: str, prompt: str, n: int, seed: int) -> list[str]:
        self.calls.append(("sample", run, prompt, n, seed))
        return [self.responses[(i + seed) % len(self.responses)] for i in range(n)]

    def score(self, run: str, component: str, prompts: list[str], responses: list[str]) -> list[float]:
        self.calls.append(("score", component, len(responses)))
        if component == "gold:length":
            return [len(r.split()) / 10 for r in responses]
        return [1.0 if ("please" in r.lower() or "helps" in r.lower()) else 0.0 for r in responses]

    def answer(self, run: str, prompt: str) -> dict[str, str]:
        self.calls.append(("answer", run, prompt))
        return {s: f"{s} says: {prompt}" for s in ("sft", "ppo", "dpo")}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app, *, host: str = "127.0.0.1", port: int | None = None, timeout: float = 20.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yields its base URL; stops it (bounded) on exit."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="alignlab-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {timeout} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
