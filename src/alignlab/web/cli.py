"""``alignlab serve``: the local web app. ``alignlab.cli`` adds the subcommand with :func:`add_serve_command`.

FastAPI and uvicorn are imported only when the command runs (the ``web`` extra).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

LOCAL = ("127.0.0.1", "localhost", "::1")


def add_serve_command(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="local web app: runs dashboard, rollout inspector, β simulator, labelling",
        description=(
            "Serve a local web app over the runs under --runs: live loss curves, the rollout inspector, "
            "the KL-regularised simulator and pairwise / ranking labelling into --store. "
            "Binds 127.0.0.1 unless --host says otherwise."
        ),
    )
    p.add_argument("--runs", default="runs", help="folder holding the run folders (default: runs)")
    p.add_argument(
        "--store",
        default=None,
        help="SQLite label store for labelling (default: <runs>/labels.sqlite; 'none' turns labelling off)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=8765,
        help="TCP port (default: 8765; 0 picks a free one)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1, this machine only)",
    )
    p.set_defaults(func=run_serve_command)
    return p


def run_serve_command(args) -> int:
    try:
        import uvicorn
    except ImportError:
        print("alignlab serve needs the web extra: pip install 'alignlab[web]'")
        return 2
    from alignlab.web.app import create_app

    runs_dir = Path(args.runs)
    store = None if str(args.store).lower() == "none" else Path(args.store or runs_dir / "labels.sqlite")
    if store is not None and args.store is None and importlib.util.find_spec("alignlab.feedback.store") is None:
        store = None  # no store module in this install: serve the rest, say labelling is off
        print("alignlab serve: alignlab.feedback.store is not installed; labelling is off")
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
    local = args.host in LOCAL
    hosts = None if local else ["*"]
    try:
        app = create_app(runs_dir, store, allowed_hosts=hosts)
    except Exception as e:  # noqa: BLE001 - a store that cannot be opened: say which and why
        print(f"alignlab serve: cannot start: {type(e).__name__}: {e}")
        return 2
    port = args.port or _free_port(args.host)
    config = uvicorn.Config(app, host=args.host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"alignlab serve: runs {runs_dir.resolve()}" + (f", labels {store.resolve()}" if store else ", labelling off")
    )
    if local:
        print(f"  open http://{shown}:{port}/  (local only: reachable from this machine alone)")
    else:
        print(f"  open http://{shown}:{port}/  (WARNING: bound to {args.host}, reachable from other machines)")
    print("  Ctrl-C stops the server")
    server.run()
    return 0


def _free_port(host: str) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
