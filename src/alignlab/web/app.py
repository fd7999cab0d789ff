"""The FastAPI app behind ``alignlab serve``: dashboard, rollout inspector, simulator, labelling.

Pages are server-rendered (:mod:`alignlab.web.pages`) with small scripts from ``static/``; the
JSON endpoints under ``/api`` feed them. Safety, in one place:

* runs, stages, figures and steps are named by id and looked up on disk (:mod:`.runsview`); an
  unknown id is a 404 page, and no other error shows a traceback;
* every write (``POST``: labels, sampling, generation) carries the header ``X-Alignlab-Token``,
  an HMAC of the browser's session cookie issued in each page's ``<meta name="alignlab-token">``;
* the ``Host`` header must name this machine (defeats DNS rebinding) unless the server was bound
  to all interfaces on purpose;
* model calls run one at a time on a worker thread (:class:`.backend.ModelQueue`).

Endpoints::

    GET  /                                      runs and their stages' states (refreshed every 5 s)
    GET  /runs/{run}                            charts per stage (poll /api/runs/{run}/metrics), config,
                                                explanation, report figures
    GET  /runs/{run}/figures/{name}             a <run>/report/*.png
    GET  /runs/{run}/{stage}/rollouts?step=N    rollout inspector (←/→ steps; k/l/a colouring)
    GET  /simulator?run=R                       β simulator and the side-by-side prompt box
    GET  /label?kind=pair|ranking               labelling
    GET  /api/runs · /api/runs/{run} · /api/runs/{run}/metrics · /api/runs/{run}/{stage}/rollouts/{step}
    GET  /api/simulator/{run}/components        reward components and eval.json's points
    POST /api/simulate                          {run, prompt, n, seed, draw, beta, mix: {component: weight}}
    POST /api/answer                            {run, prompt} -> {answers: {stage: text}}
    GET  /api/label/next?annotator=A&kind=K     {task, progress}
    GET  /api/label/progress?annotator=A[&kind=K]
    POST /api/label                             {task_id, annotator, choice | ranking, reason?, kind?}
    POST /api/label/tasks                       {run, kind}: tasks from the run's samples.jsonl
    GET  /api/label/agreement                   {pair: {...}, ranking: {...}} (Cohen's / Fleiss' κ)
    GET  /api/label/export/preferences.jsonl · /api/label/export/rankings.jsonl
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import tempfile
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from alignlab.web import pages, runsview
from alignlab.web import simulator as sim
from alignlab.web.backend import Backend, BackendError, ModelBackend, ModelQueue

log = logging.getLogger("alignlab.web")

STATIC_DIR = Path(__file__).parent / "static"
SESSION_COOKIE = "alignlab_session"
TOKEN_HEADER = "x-alignlab-token"
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_SAMPLES = 256
BETAS = sim.beta_grid(0.01, 100.0, 41)


class BadRequest(ValueError):
    """A request the user can fix (a field out of range): a 400 with the message."""


class Forbidden(PermissionError):
    """A write without the session token: a 403."""


def _float(body: dict, key: str, lo: float, hi: float, default: float | None = None) -> float:
    value = body.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"'{key}' must be a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRequest(f"'{key}' must lie in [{lo}, {hi}], got {value}")
    return value


def _int(body: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise BadRequest(f"'{key}' must be an integer")
    if not lo <= int(value) <= hi:
        raise BadRequest(f"'{key}' must lie in [{lo}, {hi}], got {value}")
    return int(value)


def _text(body: dict, key: str, max_len: int, *, required: bool = True) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise BadRequest(f"'{key}' is required")
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise BadRequest(f"'{key}' must be text of at most {max_len} characters")
    return value


class Sessions:
    """Per-browser tokens: the cookie is random, the token is its HMAC under a key made at start-up."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def token(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def check(self, request: Request) -> None:
        session = request.cookies.get(SESSION_COOKIE)
        sent = request.headers.get(TOKEN_HEADER, "")
        if not session or not hmac.compare_digest(self.token(session), sent):
            raise Forbidden("this write needs the page's session token (reload the page)")


class SimCache:
    """Samples from π_ref and their component scores, per (run, prompt, N, seed); a few hundred kept."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[tuple, dict] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple) -> dict | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple, item: dict) -> dict:
        with self._lock:
            self._items[key] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return item


def create_app(
    runs_dir: str | Path,
    store_path: str | Path | None = None,
    *,
    backend: Backend | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The app for the runs under ``runs_dir`` and the label store at ``store_path`` (None: no labelling).

    ``backend`` does the model calls (default :class:`ModelBackend`: the run's own models, loaded
    lazily); tests pass a fake one. ``allowed_hosts`` are the ``Host`` names accepted (default: this
    machine's loopback names; ``["*"]`` accepts any).
    """
    root = Path(runs_dir)
    backend = backend if backend is not None else ModelBackend(root)
    queue = ModelQueue()
    sessions = Sessions()
    cache = SimCache()
    labels = LabelService(store_path) if store_path is not None else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        queue.shutdown()

    app = FastAPI(
        title="alignlab",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOCAL_HOSTS)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.root, app.state.queue, app.state.labels = root, queue, labels

    # ------------------------------------------------------------------ pages and errors
    def page(request: Request, render, *args, status: int = 200, **kwargs) -> HTMLResponse:
        session = request.cookies.get(SESSION_COOKIE)
        new = session is None or len(session) != 43
        if new:
            session = secrets.token_urlsafe(32)
        response = HTMLResponse(render(*args, token=sessions.token(session), **kwargs), status_code=status)
        if new:
            response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(runsview.NotFound)
    async def _not_found(request: Request, exc: runsview.NotFound):
        if wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=404)
        return page(request, pages.not_found, str(exc), status=404)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=exc.status_code)
        if exc.status_code == 404:
            return page(request, pages.not_found, message, status=404)
        return page(request, pages.error_page, message, status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        # a path segment of the wrong type (a step that is not a number) is an id that does not exist
        errors = exc.errors()
        where = ", ".join(".".join(str(x) for x in e.get("loc", ())) for e in errors) or "request"
        if any(e.get("loc", ("",))[0] == "path" for e in errors):
            if wants_json(request):
                return JSONResponse({"error": f"not found ({where})"}, status_code=404)
            return page(request, pages.not_found, f"no such page ({where})", status=404)
        message = f"bad or missing field: {where}"
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=400)
        return page(request, pages.error_page, message, status=400)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return JSONResponse({"error": str(exc)}, status_code=403)

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError):
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        message = f"{type(exc).__name__}: {exc}"
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=500)
        return page(request, pages.error_page, message, status=500)

    async def json_body(request: Request) -> dict:
        sessions.check(request)
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    # ------------------------------------------------------------------ runs dashboard
    def all_runs() -> list[dict]:
        return [runsview.run_info(root, r) for r in runsview.run_ids(root)]

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return page(request, pages.runs_index, all_runs(), str(root))

    @app.get("/api/runs")
    def api_runs():
        return {"runs": all_runs()}

    @app.get("/api/runs/{run}")
    def api_run(run: str):
        return runsview.run_info(root, run)

    @app.get("/api/runs/{run}/metrics")
    def api_metrics(run: str):
        return runsview.metrics(root, run)

    @app.get("/runs/{run}", response_class=HTMLResponse)
    def run_view(request: Request, run: str):
        info = runsview.run_info(root, run)
        configs = {s["name"]: runsview.config_text(runsview.stage_folder(root, run, s["name"])) for s in info["stages"]}
        return page(request, pages.run_page, info, configs)

    @app.get("/runs/{run}/figures/{name}")
    def figure(run: str, name: str):
        return FileResponse(runsview.figure_path(root, run, name), media_type="image/png")

    # ------------------------------------------------------------------ rollout inspector
    @app.get("/runs/{run}/{stage}/rollouts", response_class=HTMLResponse)
    def rollouts_view(request: Request, run: str, stage: str, step: int | None = None):
        steps = runsview.stage_folder(root, run, stage).rollout_steps()
        if not steps:
            raise runsview.NotFound(f"stage {stage!r} of run {run!r} has no rollouts")
        data = runsview.rollout(root, run, stage, steps[-1] if step is None else step)
        return page(request, pages.inspector, data)

    @app.get("/api/runs/{run}/{stage}/rollouts/{step}")
    def api_rollout(run: str, stage: str, step: int):
        return runsview.rollout(root, run, stage, step)

    # ------------------------------------------------------------------ simulator
    @app.get("/simulator", response_class=HTMLResponse)
    def simulator_view(request: Request, run: str | None = None):
        ids = runsview.run_ids(root)
        if run is not None and run not in ids:
            raise runsview.NotFound(f"no run named {run!r}")
        run = run or (ids[0] if ids else None)
        data: dict[str, Any] = {
            "runs": ids,
            "run": run,
            "prompts": [],
            "components": [],
            "eval_points": [],
        }
        if run is not None:
            data["prompts"] = runsview.prompts_of(root, run)
            data["components"] = backend.components(run)
            data["eval_points"] = runsview.eval_points(root, run)
        return page(request, pages.simulator, data)

    @app.get("/api/simulator/{run}/components")
    def api_components(run: str):
        runsview.run_folder(root, run)
        return {
            "components": backend.components(run),
            "eval_points": runsview.eval_points(root, run),
        }

    @app.post("/api/simulate")
    async def api_simulate(request: Request):
        body = await json_body(request)
        run = _text(body, "run", 200)
        runsview.run_folder(root, run)
        prompt = _text(body, "prompt", 4000)
        n = _int(body, "n", 2, MAX_SAMPLES, 32)
        seed = _int(body, "seed", 0, 2**31 - 1, 0)  # which N samples from π_ref (part of the cache key)
        draw = _int(body, "draw", 0, 2**31 - 1, 0)  # which response is drawn from π* on those samples
        beta = _float(body, "beta", 1e-3, 1e4)
        mix_in = body.get("mix") or {}
        if not isinstance(mix_in, dict) or not mix_in:
            raise BadRequest("'mix' must map reward components to weights, e.g. {\"gold:length\": 1}")
        known = {c["id"] for c in backend.components(run)}
        mix = {}
        for k, v in mix_in.items():
            if k not in known:
                raise BadRequest(f"unknown reward component {k!r}; this run offers {', '.join(sorted(known))}")
            mix[k] = _float({"w": v}, "w", -100.0, 100.0)
        key = (run, prompt, n, seed)
        item = cache.get(key)
        if item is None:
            responses = await queue.run(backend.sample, run, prompt, n, seed)
            item = cache.put(key, {"responses": list(responses), "scores": {}})
        for comp in mix:
            if comp not in item["scores"]:
                scores = await queue.run(backend.score, run, comp, [prompt] * n, item["responses"])
                if len(scores) != n or not all(math.isfinite(s) for s in scores):
                    raise BackendError(f"reward component {comp!r} returned {len(scores)} scores for {n} responses")
                item["scores"][comp] = [float(s) for s in scores]
        rewards = sim.combine({k: item["scores"][k] for k in mix}, mix)
        w = sim.weights(rewards, beta)
        now = sim.point(rewards, beta)
        drawn = sim.draw(w, seed * 1_000_003 + draw)
        distinct: dict[str, dict] = {}  # identical responses are one row: their weights add up
        for i, text in enumerate(item["responses"]):
            row = distinct.setdefault(text, {"index": i, "text": text, "reward": rewards[i], "weight": 0.0, "count": 0})
            row["weight"] += w[i]
            row["count"] += 1
        top = sorted(distinct.values(), key=lambda r: -r["weight"])[:8]
        return {
            "beta": beta,
            "n": n,
            "expected_reward": now.expected_reward,
            "kl": now.kl,
            "ess": now.ess,
            "ref_reward": sum(rewards) / n,
            "max_kl": math.log(n),
            "drawn": {
                "index": drawn,
                "text": item["responses"][drawn],
                "reward": rewards[drawn],
                "weight": w[drawn],
            },
            "top": top,
            "distinct": len(distinct),
            "curve": [
                {
                    "beta": p.beta,
                    "kl": p.kl,
                    "expected_reward": p.expected_reward,
                    "ess": p.ess,
                }
                for p in sim.curve(rewards, BETAS)
            ],
            "eval_points": runsview.eval_points(root, run),
        }

    @app.post("/api/answer")
    async def api_answer(request: Request):
        body = await json_body(request)
        run = _text(body, "run", 200)
        runsview.run_folder(root, run)
        prompt = _text(body, "prompt", 4000)
        answers = await queue.run(backend.answer, run, prompt)
        return {"run": run, "prompt": prompt, "answers": answers}

    # ------------------------------------------------------------------ labelling
    def need_store() -> LabelService:
        if labels is None:
            raise BackendError("no label store is open: start the server with --store FILE")
        return labels

    @app.get("/label", response_class=HTMLResponse)
    def label_view(request: Request, kind: str = "pair"):
        if kind not in ("pair", "ranking"):
            raise runsview.NotFound(f"no labelling view {kind!r} (pair or ranking)")
        data = {"kind": kind, "store": labels is not None, "runs": runsview.run_ids(root)}
        return page(request, pages.label_page, data)

    @app.get("/api/label/next")
    def api_next(annotator: str, kind: str = "pair"):
        store = need_store()
        annotator = _annotator(annotator)
        if kind not in ("pair", "ranking"):
            raise BadRequest("'kind' is pair or ranking")
        return {"task": store.next_task(annotator, kind), "progress": store.progress(annotator, kind)}

    @app.get("/api/label/progress")
    def api_progress(annotator: str, kind: str | None = None):
        if kind not in (None, "pair", "ranking"):
            raise BadRequest("'kind' is pair or ranking")
        return need_store().progress(_annotator(annotator), kind)

    @app.post("/api/label")
    async def api_label(request: Request):
        store = need_store()
        body = await json_body(request)
        annotator = _annotator(body.get("annotator"))
        task_id = _int(body, "task_id", 0, 2**62)
        reason = _text(body, "reason", 2000, required=False)
        choice, ranking = body.get("choice"), body.get("ranking")
        if (choice is None) == (ranking is None):
            raise BadRequest(
                "send either 'choice' (A, B, tie, skip) or 'ranking' (ranking[i] = rank of response i, 1 = best)"
            )
        if choice is not None and choice not in ("A", "B", "tie", "skip"):
            raise BadRequest("'choice' is one of A, B, tie, skip")
        if ranking is not None and not (
            isinstance(ranking, list)
            and ranking
            and all(isinstance(i, int) and not isinstance(i, bool) for i in ranking)
        ):
            raise BadRequest("'ranking' lists the rank of each response in the task's order (1 = best)")
        label_id = await _in_thread(store.add_label, task_id, annotator, choice, ranking, reason)
        kind = body.get("kind") if body.get("kind") in ("pair", "ranking") else None
        return {"label_id": label_id, "progress": await _in_thread(store.progress, annotator, kind)}

    @app.post("/api/label/tasks")
    async def api_make_tasks(request: Request):
        """Tasks from a run's samples: a pair for every two stages' responses to a prompt, or one ranking of all."""
        store = need_store()
        body = await json_body(request)
        run = _text(body, "run", 200)
        kind = body.get("kind", "pair")
        if kind not in ("pair", "ranking"):
            raise BadRequest("'kind' is pair or ranking")
        items = runsview.label_items(root, run)
        made = await _in_thread(store.make_tasks, items, kind, run)
        return {"run": run, "kind": kind, "tasks": made}

    @app.get("/api/label/agreement")
    def api_agreement():
        return need_store().agreement()

    @app.get("/api/label/export/{name}")
    def api_export(name: str):
        store = need_store()
        if name not in ("preferences.jsonl", "rankings.jsonl"):
            raise runsview.NotFound(f"no export {name!r} (preferences.jsonl or rankings.jsonl)")
        text = store.export(name.split(".")[0])
        return PlainTextResponse(
            text,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return RedirectResponse("/static/favicon.svg")

    return app


def _annotator(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise BadRequest("'annotator' is a name of 1 to 64 characters")
    return value.strip()


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


class LabelService:
    """The label store (``alignlab.feedback.store.LabelStore``, imported lazily). The store keeps one
    SQLite connection per thread and retries busy writes, so the app's threads call it directly;
    its errors (a task that does not exist, a second label for the same task) become 400s."""

    def __init__(self, path: str | Path) -> None:
        try:
            from alignlab.feedback.store import LabelStore
        except ImportError as e:
            raise BackendError(f"labelling needs alignlab.feedback.store ({e})") from None
        self.path = Path(path)
        self.store = LabelStore(self.path)

    def _call(self, fn, *args, **kwargs):
        from alignlab.errors import AlignlabError

        try:
            return fn(*args, **kwargs)
        except AlignlabError as e:
            raise BadRequest(str(e)) from None

    def next_task(self, annotator: str, kind: str) -> dict | None:
        return self._call(self.store.next_task, annotator, kind=kind)

    def progress(self, annotator: str, kind: str | None = None) -> dict:
        return self._call(self.store.progress, annotator, kind=kind)

    def add_label(self, task_id: int, annotator: str, choice, ranking, reason) -> int:
        return self._call(self.store.add_label, task_id, annotator, choice=choice, ranking=ranking, reason=reason)

    def make_tasks(self, items: list[tuple[str, list[tuple[str, str]]]], kind: str, run: str) -> int:
        made = 0
        for prompt, answers in items:
            pid = self._call(self.store.add_prompt, prompt, {"run": run})
            ids = [self._call(self.store.add_response, pid, text, policy) for policy, text in answers]
            groups = [ids] if kind == "ranking" else [[a, b] for i, a in enumerate(ids) for b in ids[i + 1 :]]
            for group in groups:
                self._call(self.store.add_task, pid, group, kind)
                made += 1
        return made

    def agreement(self) -> dict:
        return {kind: self._call(self.store.agreement, kind) for kind in ("pair", "ranking")}

    def export(self, what: str) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"{what}.jsonl"
            (self.store.export_preferences if what == "preferences" else self.store.export_rankings)(out)
            return out.read_text(encoding="utf-8") if out.is_file() else ""
