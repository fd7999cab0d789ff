"""The label store: prompts, responses, labelling tasks and labels in one SQLite file.

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version`` and, with the
time each migration ran, in the ``schema_version`` table):

* ``prompts(id, text, messages, meta, created)`` — ``text`` is the prompt, or the last user
  message when ``messages`` (a JSON conversation) is given;
* ``responses(id, prompt_id, text, policy, meta, created)`` — ``policy`` says what produced it;
* ``tasks(id, prompt_id, kind, response_ids, created)`` — something to label: ``kind`` is
  ``pair`` (2 responses, shown as A then B) or ``ranking`` (K ≥ 2 responses);
* ``comparisons(id, task_id, annotator, choice, ranking, reason, source, confidence, created)``
  — one label: ``choice`` is A, B, tie or skip (pairs; skip for rankings too), ``ranking`` a JSON
  list with ``ranking[i]`` the rank of the task's i-th response (1 = best); exactly one of the
  two is set; one label per (task, annotator).

Concurrency: WAL journal (readers never block the writer), a busy timeout, and every write is
one ``BEGIN IMMEDIATE`` transaction retried with backoff on SQLITE_BUSY, so many processes can
label at once and nothing is lost; a label is a single row written in one transaction, so a
process killed mid-write leaves either the whole label or none of it. With ``durable=True`` (the
default, ``synchronous=FULL``) a committed label survives a power cut too; ``durable=False``
(``synchronous=NORMAL``) is several times faster and still never tears a label, but a power cut
may lose the last few commits.

Exports write the shapes :mod:`alignlab.data` reads (preference and ranking rows), atomically.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab.errors import AlignlabError
from alignlab.feedback.agreement import agreement as _agreement

CHOICES = ("A", "B", "tie", "skip")
KINDS = ("pair", "ranking")

# (version, statements): migration v-1 -> v. Append only; never edit a released one.
MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            "CREATE TABLE schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)",
            (
                "CREATE TABLE prompts (id INTEGER PRIMARY KEY, text TEXT NOT NULL, messages TEXT, "
                "meta TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL)"
            ),
            (
                "CREATE TABLE responses (id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), "
                "text TEXT NOT NULL, policy TEXT, meta TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL)"
            ),
            (
                "CREATE TABLE tasks (id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), "
                "kind TEXT NOT NULL CHECK (kind IN ('pair', 'ranking')), response_ids TEXT NOT NULL, created REAL NOT NULL)"
            ),
            (
                "CREATE TABLE comparisons (id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL REFERENCES tasks(id), "
                "annotator TEXT NOT NULL, choice TEXT CHECK (choice IN ('A', 'B', 'tie', 'skip')), ranking TEXT, "
                "reason TEXT, source TEXT NOT NULL, confidence REAL, created REAL NOT NULL, "
                "CHECK ((choice IS NULL) <> (ranking IS NULL)), UNIQUE (task_id, annotator))"
            ),
        ),
    ),
    (
        2,
        (
            "CREATE INDEX comparisons_by_annotator ON comparisons (annotator, task_id)",
            "CREATE INDEX tasks_by_kind ON tasks (kind, id)",
        ),
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class LabelError(AlignlabError):
    """A label, task or store that cannot be used; the message names the store and the field."""


def _busy(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION, *, where: str = "") -> int:
    """Bring the database to schema ``target``, one transaction per migration; returns the version.

    A store newer than this alignlab (user_version above the last migration) is refused.
    """
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LabelError(
            f"{where}: label store schema v{version} is newer than this alignlab understands (v{SCHEMA_VERSION}); upgrade alignlab"
        )
    for v, statements in MIGRATIONS:
        if v <= version or v > target:
            continue
        _retry(lambda v=v, s=statements: _apply(conn, v, s))
        version = v
    return version


def _apply(conn: sqlite3.Connection, v: int, statements: Sequence[str]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] >= v:  # another process got there first
            conn.execute("ROLLBACK")
            return
        for s in statements:
            conn.execute(s)
        conn.execute(
            "INSERT INTO schema_version (version, applied) VALUES (?, ?)",
            (v, time.time()),
        )
        conn.execute(f"PRAGMA user_version = {int(v)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _retry(fn: Callable[[], Any], attempts: int = 60) -> Any:
    """Run ``fn``, retrying with jittered exponential backoff while SQLite says busy or locked."""
    delay = 0.005
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _busy(e) or i == attempts - 1:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


class LabelStore:
    """Prompts, responses, tasks and labels in the SQLite file ``path`` (created if missing).

    Safe to share between threads (one connection per thread) and processes (each opens its own).
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0, durable: bool = True):
        self.path = Path(path)
        self.timeout, self.durable = timeout, durable
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = self._conn()
            integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as e:
            self.close()
            raise LabelError(f"{self.path}: not a label store (SQLite says: {e})") from None
        if integrity != "ok":
            raise LabelError(f"{self.path}: the database is damaged ({integrity}); restore it from a copy")
        migrate(conn, where=str(self.path))

    # ------------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            return held[1]
        conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        _retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        self._local.conn = (os.getpid(), conn)
        return conn

    def close(self) -> None:
        held = getattr(self._local, "conn", None)
        if held is not None and held[0] == os.getpid():
            held[1].close()
        self._local.conn = None

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` as one immediate transaction, retried while the database is busy."""
        conn = self._conn()

        def once():
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return _retry(once)

    def _read(self, sql: str, args: Sequence = ()) -> list[sqlite3.Row]:
        return _retry(lambda: self._conn().execute(sql, tuple(args)).fetchall())

    @property
    def version(self) -> int:
        return self._read("PRAGMA user_version")[0][0]

    # ------------------------------------------------------------------ content
    def add_prompt(self, text: str | list[dict], meta: dict | None = None) -> int:
        """Store a prompt (a string, or a messages list ending with a user turn); returns its id."""
        messages = None
        if isinstance(text, list):
            users = [m.get("content") for m in text if isinstance(m, dict) and m.get("role") == "user"]
            if not users or not isinstance(users[-1], str):
                raise LabelError(f"{self.path}: add_prompt: a messages prompt needs a user message with text")
            messages, text = json.dumps(text, ensure_ascii=False), users[-1]
        if not isinstance(text, str) or not text.strip():
            raise LabelError(f"{self.path}: add_prompt: field 'text' must be a non-empty string, got {text!r:.40}")
        row = (
            text,
            messages,
            json.dumps(meta or {}, ensure_ascii=False, default=str),
            time.time(),
        )
        return self._write(
            lambda c: (
                c.execute(
                    "INSERT INTO prompts (text, messages, meta, created) VALUES (?, ?, ?, ?)",
                    row,
                ).lastrowid
            )
        )

    def add_response(
        self,
        prompt_id: int,
        text: str,
        policy: str | None = None,
        meta: dict | None = None,
    ) -> int:
        """Store a response to prompt ``prompt_id``; returns its id."""
        if not isinstance(text, str):
            raise LabelError(f"{self.path}: add_response: field 'text' must be a string, got {type(text).__name__}")

        def insert(c):
            if c.execute("SELECT 1 FROM prompts WHERE id = ?", (prompt_id,)).fetchone() is None:
                raise LabelError(f"{self.path}: add_response: no prompt with id {prompt_id}")
            row = (
                prompt_id,
                text,
                policy,
                json.dumps(meta or {}, ensure_ascii=False, default=str),
                time.time(),
            )
            return c.execute(
                "INSERT INTO responses (prompt_id, text, policy, meta, created) VALUES (?, ?, ?, ?, ?)",
                row,
            ).lastrowid

        return self._write(insert)

    def add_task(self, prompt_id: int, response_ids: Sequence[int], kind: str = "pair") -> int:
        """A labelling task over responses of one prompt (shown in the order given); returns its id."""
        ids = [int(i) for i in response_ids]
        self._check_task_shape(kind, ids)

        def insert(c):
            return self._insert_task(c, prompt_id, ids, kind)

        return self._write(insert)

    def _check_task_shape(self, kind: str, ids: list[int]) -> None:
        if kind not in KINDS:
            raise LabelError(f"{self.path}: add_task: field 'kind' must be pair or ranking, got {kind!r}")
        if kind == "pair" and len(ids) != 2:
            raise LabelError(f"{self.path}: add_task: a pair task has 2 responses, got {len(ids)}")
        if kind == "ranking" and len(ids) < 2:
            raise LabelError(f"{self.path}: add_task: a ranking task has at least 2 responses, got {len(ids)}")
        if len(set(ids)) != len(ids):
            raise LabelError(f"{self.path}: add_task: field 'response_ids' repeats a response: {ids}")

    def _insert_task(self, c, prompt_id: int, ids: list[int], kind: str) -> int:
        marks = ",".join("?" * len(ids))
        owners = {r[0]: r[1] for r in c.execute(f"SELECT id, prompt_id FROM responses WHERE id IN ({marks})", ids)}
        for i in ids:
            if i not in owners:
                raise LabelError(f"{self.path}: add_task: no response with id {i}")
            if owners[i] != prompt_id:
                raise LabelError(f"{self.path}: add_task: response {i} answers prompt {owners[i]}, not {prompt_id}")
        row = (prompt_id, kind, json.dumps(ids), time.time())
        return c.execute(
            "INSERT INTO tasks (prompt_id, kind, response_ids, created) VALUES (?, ?, ?, ?)",
            row,
        ).lastrowid

    def add_item(
        self,
        prompt: str | list[dict],
        responses: Sequence[str],
        *,
        kind: str | None = None,
        policy: str | None = None,
        meta: dict | None = None,
    ) -> int:
        """Prompt, responses and their task in one transaction; returns the task id.

        ``kind`` defaults to ``pair`` for 2 responses, ``ranking`` for more.
        """
        kind = kind or ("pair" if len(responses) == 2 else "ranking")
        self._check_task_shape(kind, list(range(len(responses))))
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            text, messages = (
                (users[-1] if users else ""),
                json.dumps(prompt, ensure_ascii=False),
            )
        else:
            text, messages = prompt, None
        if not isinstance(text, str) or not text.strip():
            raise LabelError(f"{self.path}: add_item: the prompt must have text, got {prompt!r:.40}")

        def insert(c):
            now = time.time()
            pid = c.execute(
                "INSERT INTO prompts (text, messages, meta, created) VALUES (?, ?, ?, ?)",
                (
                    text,
                    messages,
                    json.dumps(meta or {}, ensure_ascii=False, default=str),
                    now,
                ),
            ).lastrowid
            rids = [
                c.execute(
                    "INSERT INTO responses (prompt_id, text, policy, meta, created) VALUES (?, ?, ?, '{}', ?)",
                    (pid, r, policy, now),
                ).lastrowid
                for r in responses
            ]
            return self._insert_task(c, pid, rids, kind)

        return self._write(insert)

    # ------------------------------------------------------------------ tasks and labels
    def _task(self, task_id: int) -> dict | None:
        rows = self._read(
            "SELECT t.id, t.kind, t.response_ids, p.text, p.messages FROM tasks t JOIN prompts p ON p.id = t.prompt_id WHERE t.id = ?",
            (task_id,),
        )
        if not rows:
            return None
        t = rows[0]
        ids = json.loads(t["response_ids"])
        texts = {
            r["id"]: r["text"]
            for r in self._read(
                f"SELECT id, text FROM responses WHERE id IN ({','.join('?' * len(ids))})",
                ids,
            )
        }
        out = {
            "task_id": t["id"],
            "kind": t["kind"],
            "prompt": t["text"],
            "responses": [{"id": i, "text": texts[i]} for i in ids],
        }
        if t["messages"]:
            out["messages"] = json.loads(t["messages"])
        return out

    def task(self, task_id: int) -> dict:
        """The task as :meth:`next_task` returns it; LabelError if there is none."""
        found = self._task(task_id)
        if found is None:
            raise LabelError(f"{self.path}: no task with id {task_id}")
        return found

    def next_task(self, annotator: str, kind: str | None = "pair") -> dict | None:
        """The first task (by id) of ``kind`` (``None``: any) that ``annotator`` has not labelled,
        as ``{task_id, kind, prompt, responses: [{id, text}], messages?}``; None when all are done."""
        where, args = ("AND t.kind = ?", [kind]) if kind else ("", [])
        rows = self._read(
            "SELECT t.id FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM comparisons c WHERE c.task_id = t.id AND c.annotator = ?) "
            f"{where} ORDER BY t.id LIMIT 1",
            [annotator, *args],
        )
        return self._task(rows[0][0]) if rows else None

    def add_label(
        self,
        task_id: int,
        annotator: str,
        choice: str | None = None,
        ranking: Sequence[int] | None = None,
        reason: str | None = None,
        source: str = "human",
        confidence: float | None = None,
        *,
        replace: bool = False,
    ) -> int:
        """Record one label; returns its id. Pairs take ``choice`` (A, B, tie, skip); rankings take
        ``ranking`` (``ranking[i]`` = rank of the task's i-th response, 1 = best) or ``choice="skip"``.
        A second label by the same annotator for the same task is an error unless ``replace``.
        """
        if not isinstance(annotator, str) or not annotator.strip():
            raise LabelError(f"{self.path}: add_label: field 'annotator' must be a non-empty string")
        if confidence is not None and not (isinstance(confidence, (int, float)) and 0 <= confidence <= 1):
            raise LabelError(
                f"{self.path}: add_label: field 'confidence' must be a number in [0, 1], got {confidence!r}"
            )

        def insert(c):
            t = c.execute("SELECT kind, response_ids FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if t is None:
                raise LabelError(f"{self.path}: add_label: no task with id {task_id}")
            rank_json = self._check_label(task_id, t["kind"], len(json.loads(t["response_ids"])), choice, ranking)
            old = c.execute(
                "SELECT id FROM comparisons WHERE task_id = ? AND annotator = ?",
                (task_id, annotator),
            ).fetchone()
            row = (choice, rank_json, reason, source, confidence, time.time())
            if old is not None:
                if not replace:
                    raise LabelError(
                        f"{self.path}: annotator {annotator!r} already labelled task {task_id} (label {old[0]}); pass replace=True to change it"
                    )
                c.execute(
                    "UPDATE comparisons SET choice = ?, ranking = ?, reason = ?, source = ?, confidence = ?, created = ? WHERE id = ?",
                    (*row, old[0]),
                )
                return old[0]
            return c.execute(
                "INSERT INTO comparisons (task_id, annotator, choice, ranking, reason, source, confidence, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, annotator, *row),
            ).lastrowid

        return self._write(insert)

    def _check_label(self, task_id, kind, k, choice, ranking) -> str | None:
        where = f"{self.path}: add_label (task {task_id}, a {kind} task)"
        if (choice is None) == (ranking is None):
            raise LabelError(f"{where}: give exactly one of 'choice' and 'ranking'")
        if choice is not None:
            allowed = CHOICES if kind == "pair" else ("skip",)
            if choice not in allowed:
                raise LabelError(f"{where}: field 'choice' must be one of {', '.join(allowed)}, got {choice!r}")
            return None
        if kind != "ranking":
            raise LabelError(f"{where}: field 'ranking' is for ranking tasks; a pair takes choice A, B, tie or skip")
        ranks = list(ranking)
        if any(not isinstance(r, int) or isinstance(r, bool) for r in ranks) or sorted(ranks) != list(range(1, k + 1)):
            raise LabelError(
                f"{where}: field 'ranking' must be a permutation of 1..{k} (ranking[i] = rank of response i, 1 = best), got {ranks}"
            )
        return json.dumps(ranks)

    def progress(self, annotator: str, kind: str | None = None) -> dict:
        """``{"done", "total"}``: tasks (of ``kind``, or all) this annotator labelled, and all tasks."""
        where, args = ("WHERE kind = ?", [kind]) if kind else ("", [])
        total = self._read(f"SELECT COUNT(*) FROM tasks {where}", args)[0][0]
        done = self._read(
            f"SELECT COUNT(*) FROM comparisons c JOIN tasks t ON t.id = c.task_id WHERE c.annotator = ? {where.replace('WHERE', 'AND')}",
            [annotator, *args],
        )[0][0]
        return {"done": done, "total": total}

    def labels(self) -> list[dict]:
        """Every label with its task: ``{id, task_id, kind, annotator, choice, ranking, reason,
        source, confidence, created, prompt, messages, responses: [text, ...]}``, by label id."""
        rows = self._read(
            "SELECT c.*, t.kind, t.response_ids, p.text AS prompt, p.messages FROM comparisons c "
            "JOIN tasks t ON t.id = c.task_id JOIN prompts p ON p.id = t.prompt_id ORDER BY c.id"
        )
        texts = {r["id"]: r["text"] for r in self._read("SELECT id, text FROM responses")}
        out = []
        for r in rows:
            d = {
                k: r[k]
                for k in (
                    "id",
                    "task_id",
                    "kind",
                    "annotator",
                    "choice",
                    "reason",
                    "source",
                    "confidence",
                    "created",
                    "prompt",
                )
            }
            d["ranking"] = json.loads(r["ranking"]) if r["ranking"] else None
            d["messages"] = json.loads(r["messages"]) if r["messages"] else None
            d["responses"] = [texts[i] for i in json.loads(r["response_ids"])]
            out.append(d)
        return out

    # ------------------------------------------------------------------ exports
    def preference_rows(self) -> list[dict]:
        """Pair labels with choice A or B as preference rows (ties and skips are left out)."""
        rows = []
        for lab in self.labels():
            if lab["kind"] != "pair" or lab["choice"] not in ("A", "B"):
                continue
            a, b = lab["responses"]
            chosen, rejected = (a, b) if lab["choice"] == "A" else (b, a)
            rows.append(
                {
                    "prompt": lab["messages"] or lab["prompt"],
                    "chosen": chosen,
                    "rejected": rejected,
                    "source": lab["source"],
                    "annotator": lab["annotator"],
                    "confidence": lab["confidence"],
                    "chosen_position": lab["choice"],
                    "reason": lab["reason"],
                    "task_id": lab["task_id"],
                    "label_id": lab["id"],
                }
            )
        return rows

    def ranking_rows(self) -> list[dict]:
        """Ranking labels (not skips) as ranking rows."""
        return [
            {
                "prompt": lab["messages"] or lab["prompt"],
                "responses": lab["responses"],
                "ranking": lab["ranking"],
                "source": lab["source"],
                "annotator": lab["annotator"],
                "reason": lab["reason"],
                "task_id": lab["task_id"],
                "label_id": lab["id"],
            }
            for lab in self.labels()
            if lab["kind"] == "ranking" and lab["ranking"]
        ]

    def export_preferences(self, path: str | os.PathLike) -> int:
        """Write :meth:`preference_rows` to a JSONL file (atomically); returns the number of rows."""
        from alignlab.runs import atomic_write_jsonl

        rows = self.preference_rows()
        atomic_write_jsonl(path, rows)
        return len(rows)

    def export_rankings(self, path: str | os.PathLike) -> int:
        """Write :meth:`ranking_rows` to a JSONL file (atomically); returns the number of rows."""
        from alignlab.runs import atomic_write_jsonl

        rows = self.ranking_rows()
        atomic_write_jsonl(path, rows)
        return len(rows)

    # ------------------------------------------------------------------ agreement
    def agreement(self, kind: str = "pair") -> dict:
        """Inter-annotator agreement on shared tasks (:mod:`alignlab.feedback.agreement`): Cohen's κ
        for two annotators, Fleiss' κ for more. Pairs compare choices (A, B, tie; skips left out);
        rankings compare which response was ranked first."""
        per_task: dict[int, dict[str, Any]] = {}
        for lab in self.labels():
            if lab["kind"] != kind or lab["choice"] == "skip":
                continue
            value = lab["choice"] if kind == "pair" else lab["ranking"].index(1)
            per_task.setdefault(lab["task_id"], {})[lab["annotator"]] = value
        return _agreement(per_task)

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result (``"ok"`` when sound)."""
        return self._read("PRAGMA integrity_check")[0][0]
