"""Labelling through the web app's HTTP API into the real label store, and under concurrent load."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

pytest.importorskip("fastapi")
store_mod = pytest.importorskip(
    "alignlab.feedback.store", reason="alignlab.feedback.store (the label store) is not in this checkout yet"
)
import httpx
from fastapi.testclient import TestClient

from alignlab.web.app import create_app
from alignlab.web.testing import XSS, FakeBackend, make_demo_run, serve

LabelStore = store_mod.LabelStore


def token_of(client) -> str:
    return re.search(r'name="alignlab-token" content="([^"]+)"', client.get("/label").text).group(1)


def seed_store(path, pairs: int = 3, rankings: int = 1, k: int = 4) -> LabelStore:
    store = LabelStore(path)
    for i in range(pairs):
        pid = store.add_prompt(f"pair prompt {i}")
        a = store.add_response(pid, f"answer A{i}", policy="sft")
        b = store.add_response(pid, XSS if i == 0 else f"answer B{i}", policy="ppo")
        store.add_task(pid, [a, b], kind="pair")
    for i in range(rankings):
        pid = store.add_prompt(f"ranking prompt {i}")
        ids = [store.add_response(pid, f"ranked answer {j}") for j in range(k)]
        store.add_task(pid, ids, kind="ranking")
    return store


@pytest.fixture
def setup(tmp_path):
    make_demo_run(tmp_path / "runs")
    store = seed_store(tmp_path / "labels.sqlite")
    app = create_app(tmp_path / "runs", tmp_path / "labels.sqlite", backend=FakeBackend(), allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, store, tmp_path


def test_pair_and_ranking_labels_reach_the_store(setup):
    c, store, _ = setup
    h = {"X-Alignlab-Token": token_of(c)}
    t = c.get("/api/label/next", params={"annotator": "ann", "kind": "pair"}).json()
    assert t["progress"] == {"done": 0, "total": 3}
    assert [r["text"] for r in t["task"]["responses"]] == ["answer A0", XSS]
    r = c.post(
        "/api/label",
        json={"task_id": t["task"]["task_id"], "annotator": "ann", "choice": "B", "reason": "kinder"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["progress"]["done"] == 1
    t = c.get("/api/label/next", params={"annotator": "ann", "kind": "ranking"}).json()["task"]
    ranks = [2, 4, 1, 3]
    r = c.post(
        "/api/label", json={"task_id": t["task_id"], "annotator": "ann", "ranking": ranks, "kind": "ranking"}, headers=h
    )
    assert r.status_code == 200, r.text
    labels = store.labels()
    assert [(lab["choice"], lab["ranking"], lab["reason"]) for lab in labels] == [
        ("B", None, "kinder"),
        (None, ranks, None),
    ]
    prefs = [json.loads(line) for line in c.get("/api/label/export/preferences.jsonl").text.splitlines()]
    assert prefs[0]["chosen"] == XSS and prefs[0]["rejected"] == "answer A0"
    ranked = [json.loads(line) for line in c.get("/api/label/export/rankings.jsonl").text.splitlines()]
    assert ranked[0]["ranking"] == ranks


@pytest.mark.parametrize(
    "body",
    [
        {"choice": "C"},
        {"choice": "A", "ranking": [1, 2]},
        {},
        {"ranking": [1, 1]},
        {"choice": "A", "task_id": 9999},
        {"choice": "A", "annotator": ""},
        {"choice": "A", "annotator": "x" * 65},
    ],
)
def test_bad_labels_are_400s(setup, body):
    c, store, _ = setup
    full = {"task_id": 1, "annotator": "ann", **body}
    r = c.post("/api/label", json=full, headers={"X-Alignlab-Token": token_of(c)})
    assert r.status_code == 400, r.text
    assert store.labels() == []


def test_a_second_label_for_the_same_task_is_refused(setup):
    c, store, _ = setup
    h = {"X-Alignlab-Token": token_of(c)}
    assert c.post("/api/label", json={"task_id": 1, "annotator": "a", "choice": "A"}, headers=h).status_code == 200
    assert c.post("/api/label", json={"task_id": 1, "annotator": "a", "choice": "B"}, headers=h).status_code == 400
    assert len(store.labels()) == 1


def test_labels_need_the_token(setup):
    c, store, _ = setup
    assert c.post("/api/label", json={"task_id": 1, "annotator": "a", "choice": "A"}).status_code == 403
    assert store.labels() == []


def test_agreement_between_annotators(setup):
    c, _, _ = setup
    h = {"X-Alignlab-Token": token_of(c)}
    for who, choices in {"ann": ["A", "B", "A"], "bob": ["A", "B", "B"]}.items():
        for task_id, ch in zip([1, 2, 3], choices):
            assert (
                c.post("/api/label", json={"task_id": task_id, "annotator": who, "choice": ch}, headers=h).status_code
                == 200
            )
    a = c.get("/api/label/agreement").json()
    assert a["pair"]["method"] == "cohen" and a["pair"]["annotators"] == ["ann", "bob"]
    assert a["pair"]["observed"] == pytest.approx(2 / 3)


def test_tasks_from_a_runs_samples(setup):
    c, store, _ = setup
    h = {"X-Alignlab-Token": token_of(c)}
    r = c.post("/api/label/tasks", json={"run": "demo", "kind": "pair"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["tasks"] == 12  # 2 prompts × C(4 stages, 2)
    assert c.post("/api/label/tasks", json={"run": "demo", "kind": "ranking"}, headers=h).json()["tasks"] == 2
    assert c.post("/api/label/tasks", json={"run": "../etc", "kind": "pair"}, headers=h).status_code == 404
    assert store.progress("nobody")["total"] == 3 + 1 + 12 + 2


@pytest.mark.slow
def test_twenty_concurrent_clients_label_two_thousand_times(tmp_path):
    """20 annotators × 100 pair labels each, all at once over real HTTP: every label stored exactly once."""
    make_demo_run(tmp_path / "runs")
    store = LabelStore(tmp_path / "labels.sqlite")
    for i in range(100):
        pid = store.add_prompt(f"prompt {i}")
        store.add_task(pid, [store.add_response(pid, f"a{i}"), store.add_response(pid, f"b{i}")], kind="pair")
    app = create_app(tmp_path / "runs", tmp_path / "labels.sqlite", backend=FakeBackend())
    errors: list[str] = []
    sent: dict[str, list[int]] = {}

    def client(name: str, base: str) -> None:
        try:
            with httpx.Client(base_url=base, timeout=60) as http:
                tok = re.search(r'name="alignlab-token" content="([^"]+)"', http.get("/label").text).group(1)
                done = sent.setdefault(name, [])
                for _ in range(100):
                    task = http.get("/api/label/next", params={"annotator": name, "kind": "pair"}).json()["task"]
                    choice = "A" if task["task_id"] % 2 else "B"
                    r = http.post(
                        "/api/label",
                        json={"task_id": task["task_id"], "annotator": name, "choice": choice},
                        headers={"X-Alignlab-Token": tok},
                    )
                    r.raise_for_status()
                    done.append(task["task_id"])
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(f"{name}: {type(e).__name__}: {e}")

    start = time.monotonic()
    with serve(app) as base:
        threads = [threading.Thread(target=client, args=(f"ann{i:02d}", base)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads), "clients still running after 240 s"
    assert not errors, errors[:3]
    labels = store.labels()
    assert len(labels) == 2000
    assert len({(lab["task_id"], lab["annotator"]) for lab in labels}) == 2000
    for name, ids in sent.items():
        assert sorted(ids) == list(range(1, 101)), name
        assert store.progress(name) == {"done": 100, "total": 100}
    assert time.monotonic() - start < 300
