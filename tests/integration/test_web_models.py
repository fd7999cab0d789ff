"""The web app's real model path on a tiny random model: sampling from π_ref, scoring, side-by-side
answers, and the single model worker that keeps the dashboard responsive while a model call runs."""

from __future__ import annotations

import re
import threading
import time

import pytest

pytest.importorskip("fastapi")
import httpx
from fastapi.testclient import TestClient

from alignlab.web.app import create_app
from alignlab.web.backend import ModelBackend
from alignlab.web.testing import FakeBackend, make_demo_run, serve


@pytest.fixture
def root_with_models(tmp_path):
    from alignlab.models.load import save_pretrained
    from alignlab.models.presets import build_tiny

    make_demo_run(tmp_path)
    for i, stage in enumerate(("sft", "ppo", "dpo")):
        model, tok = build_tiny(seed=i)
        save_pretrained(model, tok, tmp_path / "demo" / stage / "final", base="tiny", seed=i)
    return tmp_path


def test_model_backend_samples_scores_and_answers(root_with_models):
    backend = ModelBackend(root_with_models, max_new_tokens=8)
    out = backend.sample("demo", "How do I boil an egg?", 5, seed=0)
    assert len(out) == 5 and all(isinstance(t, str) for t in out)
    assert backend.sample("demo", "How do I boil an egg?", 5, seed=0) == out  # seeded
    comps = [c["id"] for c in backend.components("demo")]
    length = next(c for c in comps if c.endswith((":length", ":char_fraction")))
    scores = backend.score("demo", length, ["q"] * 5, out)
    assert len(scores) == 5 and all(isinstance(s, float) for s in scores)
    answers = backend.answer("demo", "Hello?")
    assert list(answers) == ["sft", "ppo", "dpo"]


def test_simulate_through_http_with_the_real_backend(root_with_models):
    backend = ModelBackend(root_with_models, max_new_tokens=8)
    app = create_app(root_with_models, None, backend=backend, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        tok = re.search(r'name="alignlab-token" content="([^"]+)"', c.get("/simulator").text).group(1)
        comp = next(x["id"] for x in backend.components("demo") if x["id"].startswith(("gold:", "rule:")))
        body = {"run": "demo", "prompt": "Say hi.", "n": 6, "beta": 0.5, "mix": {comp: 1.0}}
        r = c.post("/api/simulate", json=body, headers={"X-Alignlab-Token": tok})
        assert r.status_code == 200, r.text
        assert 0.0 <= r.json()["kl"] <= r.json()["max_kl"] + 1e-9


def test_a_missing_reference_model_is_a_message(tmp_path):
    make_demo_run(tmp_path)
    backend = ModelBackend(tmp_path)
    app = create_app(tmp_path, None, backend=backend, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        tok = re.search(r'name="alignlab-token" content="([^"]+)"', c.get("/").text).group(1)
        comp = backend.components("demo")[0]["id"]
        body = {"run": "demo", "prompt": "hi", "n": 4, "beta": 1.0, "mix": {comp: 1.0}}
        r = c.post("/api/simulate", json=body, headers={"X-Alignlab-Token": tok})
        assert r.status_code == 409 and "no final/ model" in r.json()["error"]


class SlowBackend(FakeBackend):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.threads: set[str] = set()

    def sample(self, run, prompt, n, seed):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return super().sample(run, prompt, n, seed)


def test_a_slow_model_call_never_blocks_the_dashboard(tmp_path):
    make_demo_run(tmp_path)
    backend = SlowBackend(2.0)
    app = create_app(tmp_path, None, backend=backend)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        tok = re.search(r'name="alignlab-token" content="([^"]+)"', http.get("/").text).group(1)
        results: list[float] = []

        def simulate(prompt: str) -> None:
            body = {"run": "demo", "prompt": prompt, "n": 4, "beta": 1.0, "mix": {"gold:length": 1.0}}
            r = http.post("/api/simulate", json=body, headers={"X-Alignlab-Token": tok})
            r.raise_for_status()
            results.append(time.monotonic())

        start = time.monotonic()
        workers = [threading.Thread(target=simulate, args=(f"p{i}",)) for i in range(2)]
        for w in workers:
            w.start()
        time.sleep(0.3)
        for _ in range(5):  # the dashboard answers at once while the model worker is busy
            t0 = time.monotonic()
            assert http.get("/api/runs/demo/metrics").status_code == 200
            assert http.get("/runs/demo").status_code == 200
            assert time.monotonic() - t0 < 1.0
        for w in workers:
            w.join(30)
        # one worker thread: the two 2-second calls ran one after the other
        assert len(results) == 2 and max(results) - start >= 3.9
        assert len(backend.threads) == 1 and next(iter(backend.threads)).startswith("alignlab-model")
