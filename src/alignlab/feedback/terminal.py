"""Label in a terminal: one task at a time from a :class:`~alignlab.feedback.store.LabelStore`.

Keys: for a pair, ``a`` / ``b`` (that response is better), ``t`` (tie), ``s`` (skip); for a
ranking of K responses, the ranks in the order shown (``2 1 3``: the first response is 2nd best,
the second is best, ...), or ``s``. Anything after ``#`` is kept as the reason (``a # clearer``).
``q`` quits. Each label is saved as it is given, so quitting, a crash or Ctrl-C loses nothing and
the next session resumes at the first task this annotator has not labelled.
"""

from __future__ import annotations

from collections.abc import Callable

from alignlab.feedback.store import LabelStore

PAIR_KEYS = {"a": "A", "b": "B", "t": "tie", "s": "skip"}


def _show(task: dict, progress: dict, print_fn: Callable) -> None:
    print_fn(f"\n--- task {task['task_id']} ({progress['done'] + 1} of {progress['total']}) ---")
    if task.get("messages"):
        for m in task["messages"]:
            print_fn(f"[{m['role']}] {m['content']}")
    else:
        print_fn(f"[prompt] {task['prompt']}")
    names = "AB" if task["kind"] == "pair" else [str(i + 1) for i in range(len(task["responses"]))]
    for name, r in zip(names, task["responses"]):
        print_fn(f"\n({name}) {r['text']}")
    if task["kind"] == "pair":
        print_fn("\nbetter? a / b, t = tie, s = skip, q = quit (add '# reason' to say why)")
    else:
        print_fn(
            f"\nrank them: {len(task['responses'])} numbers, the rank of each response in the order shown (1 = best); s = skip, q = quit"
        )


def _parse(answer: str, task: dict) -> tuple[dict | None, str | None]:
    """``(label kwargs, problem)``: one of them is None."""
    text, _, reason = answer.partition("#")
    key = text.strip().lower()
    extra = {"reason": reason.strip() or None}
    if key == "s":
        return {"choice": "skip", **extra}, None
    if task["kind"] == "pair":
        if key in PAIR_KEYS:
            return {"choice": PAIR_KEYS[key], **extra}, None
        return None, f"'{key}' is not a choice: type a, b, t, s or q"
    k = len(task["responses"])
    try:
        ranks = [int(x) for x in key.replace(",", " ").split()]
    except ValueError:
        return (
            None,
            f"'{key}' is not a ranking: type {k} numbers such as {' '.join(str(i) for i in range(1, k + 1))}",
        )
    if sorted(ranks) != list(range(1, k + 1)):
        return None, f"a ranking uses each of 1..{k} once; got {ranks}"
    return {"ranking": ranks, **extra}, None


def label_interactively(
    store: LabelStore,
    annotator: str,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., None] = print,
    kind: str | None = None,
) -> int:
    """Show this annotator's unlabelled tasks (of ``kind``, or all) one by one and store each
    answer; returns how many labels were given this session. Stops at ``q``, end of input, or
    when every task is labelled."""
    given = 0
    while True:
        task = store.next_task(annotator, kind)
        if task is None:
            print_fn(f"all {store.progress(annotator, kind)['total']} tasks labelled by {annotator}; thank you")
            return given
        _show(task, store.progress(annotator, kind), print_fn)
        while True:
            try:
                answer = input_fn("> ")
            except (EOFError, KeyboardInterrupt):
                answer = "q"
            if answer.strip().lower() == "q":
                p = store.progress(annotator, kind)
                print_fn(f"stopped: {p['done']} of {p['total']} labelled; run again to resume")
                return given
            label, problem = _parse(answer, task)
            if problem:
                print_fn(problem)
                continue
            store.add_label(task["task_id"], annotator, source="human", **label)
            given += 1
            break
