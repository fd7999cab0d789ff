"""Label store and terminal labelling without concurrency: schema, validation, resume, agreement by hand."""

import sqlite3

import pytest

from alignlab.feedback.agreement import cohen_kappa, fleiss_kappa
from alignlab.feedback.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    LabelError,
    LabelStore,
    migrate,
)
from alignlab.feedback.terminal import label_interactively


@pytest.fixture
def store(tmp_path):
    return LabelStore(tmp_path / "labels.db", durable=False)


def test_schema_version_and_migration_from_v1(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(str(path), isolation_level=None)
    assert migrate(conn, target=1) == 1  # a store written by the first schema
    conn.execute("INSERT INTO prompts (text, meta, created) VALUES ('old prompt', '{}', 0)")
    conn.close()
    store = LabelStore(path)
    assert store.version == SCHEMA_VERSION == MIGRATIONS[-1][0]
    raw = sqlite3.connect(str(path))
    assert [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")] == list(
        range(1, SCHEMA_VERSION + 1)
    )
    assert raw.execute("SELECT text FROM prompts").fetchone()[0] == "old prompt"  # data kept
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(LabelError, match="newer than this alignlab"):
        LabelStore(path)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(LabelError, match="junk.db: not a label store"):
        LabelStore(tmp_path / "junk.db")


def test_tasks_labels_and_resume(store):
    p = store.add_prompt("How long do I boil rice?", meta={"topic": "rice"})
    r1, r2, r3 = (store.add_response(p, t, policy="pi") for t in ("18 minutes.", "An hour.", "Ten minutes."))
    t1 = store.add_task(p, [r1, r2])
    t2 = store.add_task(p, [r1, r2, r3], kind="ranking")
    task = store.next_task("ann")
    assert task == {
        "task_id": t1,
        "kind": "pair",
        "prompt": "How long do I boil rice?",
        "responses": [
            {"id": r1, "text": "18 minutes."},
            {"id": r2, "text": "An hour."},
        ],
    }
    assert store.next_task("ann", kind="ranking")["task_id"] == t2
    store.add_label(t1, "ann", choice="A", reason="right time")
    assert store.next_task("ann") is None and store.next_task("other")["task_id"] == t1
    assert store.progress("ann") == {"done": 1, "total": 2}
    assert store.progress("ann", kind="pair") == {"done": 1, "total": 1}
    store.add_label(t2, "ann", ranking=[1, 3, 2])
    with pytest.raises(LabelError, match="already labelled task"):
        store.add_label(t1, "ann", choice="B")
    store.add_label(t1, "ann", choice="B", replace=True)
    labs = store.labels()
    assert [(lab["choice"], lab["ranking"]) for lab in labs] == [
        ("B", None),
        (None, [1, 3, 2]),
    ]
    assert labs[0]["responses"] == ["18 minutes.", "An hour."] and labs[0]["reason"] is None  # replaced as a whole


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"choice": "C"}, "field 'choice' must be one of A, B, tie, skip"),
        ({"choice": "A", "ranking": [1, 2]}, "exactly one of 'choice' and 'ranking'"),
        ({"ranking": [1, 2]}, "'ranking' is for ranking tasks"),
        ({"choice": "A", "confidence": 1.5}, "'confidence' must be a number in [0, 1]"),
    ],
)
def test_bad_pair_labels_name_the_field(store, kwargs, message):
    t = store.add_item("q?", ["x", "y"])
    with pytest.raises(LabelError, match=message.replace("[", r"\[").replace("]", r"\]")):
        store.add_label(t, "ann", **kwargs)
    assert store.labels() == []


def test_bad_tasks_and_rankings_are_refused(store):
    p, q = store.add_prompt("p?"), store.add_prompt("q?")
    a, b = store.add_response(p, "a"), store.add_response(q, "b")
    with pytest.raises(LabelError, match="answers prompt"):
        store.add_task(p, [a, b])
    with pytest.raises(LabelError, match="a pair task has 2 responses"):
        store.add_task(p, [a])
    with pytest.raises(LabelError, match="no prompt with id 99"):
        store.add_response(99, "x")
    t = store.add_item("r?", ["1", "2", "3"])
    with pytest.raises(LabelError, match="permutation of 1..3"):
        store.add_label(t, "ann", ranking=[1, 1, 2])
    with pytest.raises(LabelError, match="no task with id 12345"):
        store.add_label(12345, "ann", choice="A")


def test_kappa_by_hand():
    # P_o = 3/4; P_e = .5*.25 + .5*.75 = .5; kappa = (.75 - .5) / .5
    assert cohen_kappa(list("AABB"), list("ABBB"))["kappa"] == pytest.approx(0.5)
    # P_i = 1, 1/3, 1 -> P_o = 7/9; p = (5/9, 4/9) -> P_e = 41/81; kappa = (63 - 41) / (81 - 41)
    assert fleiss_kappa([list("AAA"), list("AAB"), list("BBB")])["kappa"] == pytest.approx(22 / 40)
    assert cohen_kappa(list("AA"), list("AA"))["kappa"] is None  # one category only: undefined


def test_store_agreement_cohen_and_fleiss(store):
    tasks = [store.add_item(f"q{i}?", [f"a{i}", f"b{i}"]) for i in range(4)]
    for t, x, y in zip(tasks, "AABB", "ABBB"):
        store.add_label(t, "x", choice=x)
        store.add_label(t, "y", choice=y)
    got = store.agreement()
    assert got["method"] == "cohen" and got["kappa"] == pytest.approx(0.5) and got["items"] == 4
    for t, z in zip(tasks, "AABB"):
        store.add_label(t, "z", choice=z)
    got = store.agreement()
    assert got["method"] == "fleiss" and got["annotators"] == ["x", "y", "z"]
    assert got["kappa"] == pytest.approx(fleiss_kappa([list("AAA"), list("ABA"), list("BBB"), list("BBB")])["kappa"])


def test_terminal_loop_labels_resumes_and_quits(store):
    t1 = store.add_item("Best bread flour?", ["Strong flour.", "Cake flour."])
    t2 = store.add_item("Rank herbs for pesto.", ["Basil.", "Mint.", "Dill."])
    t3 = store.add_item("Oven for pizza?", ["Very hot.", "Warm."])
    out = []
    answers = iter(["x", "a # has more gluten", "1 1 2", "1 3 2", "q"])
    n = label_interactively(store, "ann", input_fn=lambda _: next(answers), print_fn=out.append)
    assert n == 2
    text = "\n".join(out)
    assert "'x' is not a choice" in text and "uses each of 1..3 once" in text and "stopped: 2 of 3 labelled" in text
    assert "(A) Strong flour." in text and "(3) Dill." in text
    # resumes at the first task not labelled; end of input quits cleanly
    answers = iter(["b"])

    def feed(_):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    assert label_interactively(store, "ann", input_fn=feed, print_fn=out.append) == 1
    labs = {lab["task_id"]: lab for lab in store.labels()}
    assert labs[t1]["choice"] == "A" and labs[t1]["reason"] == "has more gluten"
    assert labs[t2]["ranking"] == [1, 3, 2] and labs[t3]["choice"] == "B"
    assert label_interactively(store, "ann", input_fn=feed, print_fn=out.append) == 0
    assert out[-1].startswith("all 3 tasks labelled")
