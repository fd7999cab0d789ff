"""``alignlab serve`` as a user starts it: a process that prints its local URL and serves the runs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("uvicorn")
import httpx

from alignlab.web.testing import make_demo_run

SCRIPT = """
import argparse, sys
from alignlab.web.cli import add_serve_command, run_serve_command
parser = argparse.ArgumentParser(prog="alignlab")
add_serve_command(parser.add_subparsers())
sys.exit(run_serve_command(parser.parse_args(sys.argv[1:])))
"""


def test_serve_prints_a_local_url_and_serves(tmp_path):
    make_demo_run(tmp_path / "runs")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", SCRIPT, "serve", "--runs", str(tmp_path / "runs"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines, url = [], None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
        assert url, "".join(lines)
        assert "local only" in "".join(lines)
        assert str(tmp_path / "runs" / "labels.sqlite") in "".join(lines) or "labelling off" in "".join(lines)
        for _ in range(100):  # the URL is printed just before uvicorn binds
            try:
                r = httpx.get(url + "runs/demo", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert r.status_code == 200 and "ppo" in r.text
        assert httpx.get(url + "runs/..%2F..%2Fetc", timeout=5).status_code == 404
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
