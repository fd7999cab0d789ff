"""The label store under load: many writers at once, a writer killed mid-write, exports that load."""

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import pytest

from alignlab.feedback.store import LabelStore

WRITERS, LABELS = 8, 500


def _writer(path: str, who: int, task_ids: list[int]) -> None:
    store = LabelStore(path, durable=False)  # fsync per commit off: the same locking, 4x faster
    for i, t in enumerate(task_ids):
        store.add_label(
            t,
            f"w{who}",
            choice="AB"[(i + who) % 2],
            source="simulated",
            confidence=0.5 + who / 100,
        )


@pytest.fixture
def filled(tmp_path):
    path = tmp_path / "labels.db"
    store = LabelStore(path, durable=False)
    tasks = [store.add_item(f"Question {i}?", [f"Answer A{i}.", f"Answer B{i}."], policy="test") for i in range(LABELS)]
    return path, store, tasks


def test_eight_processes_writing_at_once_lose_nothing_and_duplicate_nothing(filled):
    path, store, tasks = filled
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), w, tasks)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    labels = store.labels()
    assert len(labels) == WRITERS * LABELS
    assert len({(lab["task_id"], lab["annotator"]) for lab in labels}) == WRITERS * LABELS
    for w in range(WRITERS):
        assert store.progress(f"w{w}") == {"done": LABELS, "total": LABELS}
        assert store.next_task(f"w{w}") is None
    assert store.integrity() == "ok"


def _killable_writer(path: str, task_ids: list[int], conn) -> None:
    store = LabelStore(path)
    for t in task_ids:
        store.add_label(t, "victim", choice="A", reason="x" * 2000)  # a longer row: more time inside the write
        conn.send(t)


def test_a_writer_killed_mid_write_leaves_the_store_consistent(filled):
    path, _store, tasks = filled
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_killable_writer, args=(str(path), tasks, child))
    proc.start()
    acked = []
    deadline = time.time() + 60
    while len(acked) < 40 and time.time() < deadline:
        if parent.poll(0.1):
            acked.append(parent.recv())
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    while parent.poll():
        acked.append(parent.recv())
    assert len(acked) >= 40
    reopened = LabelStore(path)  # recovers the WAL
    assert reopened.integrity() == "ok"
    labels = [lab for lab in reopened.labels() if lab["annotator"] == "victim"]
    # every acknowledged label is there, at most one more (committed, killed before it was acknowledged)
    assert len(acked) <= len(labels) <= len(acked) + 1
    assert [lab["task_id"] for lab in labels][: len(acked)] == acked
    for lab in labels:  # no partial label
        assert lab["choice"] == "A" and lab["reason"] == "x" * 2000 and lab["source"] == "human"
    raw = sqlite3.connect(str(path))
    assert raw.execute("SELECT COUNT(*) FROM comparisons WHERE choice IS NULL AND ranking IS NULL").fetchone()[0] == 0
    # the store keeps working after the crash
    reopened.add_label(tasks[-1], "after", choice="B")
    assert reopened.progress("after")["done"] == 1


def test_exports_round_trip_through_load_records(tmp_path):
    from alignlab.data import load_records

    store = LabelStore(tmp_path / "s.db")
    pair = store.add_item(
        "How do I dice an onion?",
        ["Halve it, slice, then cross-cut.", "Use a blender."],
    )
    pair2 = store.add_item(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Salt pasta water?"},
        ],
        ["Yes, generously.", "Never."],
    )
    tie = store.add_item("Tea or coffee?", ["Tea.", "Coffee."])
    rank = store.add_item("Name a herb.", ["Basil.", "Rock.", "Thyme."])
    store.add_label(pair, "ann", choice="A", reason="clearer", confidence=0.9)
    store.add_label(pair2, "ann", choice="A")
    store.add_label(tie, "ann", choice="tie")
    store.add_label(rank, "ann", ranking=[1, 3, 2])
    n = store.export_preferences(tmp_path / "p.jsonl")
    assert n == 2
    recs = load_records(tmp_path / "p.jsonl", "preference").records
    assert recs[0].chosen == "Halve it, slice, then cross-cut." and recs[0].rejected == "Use a blender."
    assert [m.role for m in recs[1].prompt] == ["system", "user"]
    assert store.export_rankings(tmp_path / "r.jsonl") == 1
    r = load_records(tmp_path / "r.jsonl", "ranking").records[0]
    assert r.responses == ("Basil.", "Rock.", "Thyme.") and r.ranks == (1, 3, 2)
    assert next(iter(r.pairs())) == ("Basil.", "Thyme.")


def _open_and_label(path: str, who: int) -> None:
    store = LabelStore(path, durable=False)  # every process races to create and migrate the schema
    task = store.add_item(f"prompt from {who}?", ["x", "y"])
    store.add_label(task, f"w{who}", choice="A")


def test_processes_racing_to_create_a_new_store_all_succeed(tmp_path):
    path = tmp_path / "fresh.db"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open_and_label, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = LabelStore(path)
    assert len(store.labels()) == 4
    raw = sqlite3.connect(str(path))
    assert [r[0] for r in raw.execute("SELECT version FROM schema_version")] == [1, 2]  # each migration ran once
