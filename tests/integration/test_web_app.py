"""The web app's HTTP surface on a hand-made run folder, through Starlette's test client (no browser, no model)."""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from alignlab import runs
from alignlab.web import runsview
from alignlab.web.app import create_app
from alignlab.web.cli import add_serve_command
from alignlab.web.testing import XSS, FakeBackend, make_demo_run


@pytest.fixture
def root(tmp_path):
    make_demo_run(tmp_path, complete=False)
    return tmp_path


@pytest.fixture
def backend():
    return FakeBackend()


@pytest.fixture
def client(root, backend):
    app = create_app(root, None, backend=backend, allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def token_of(client, url="/") -> str:
    return re.search(r'name="alignlab-token" content="([^"]+)"', client.get(url).text).group(1)


def test_every_page_opens(client):
    for url in [
        "/",
        "/runs/demo",
        "/runs/demo/ppo/rollouts",
        "/runs/demo/ppo/rollouts?step=1",
        "/simulator",
        "/label",
    ]:
        r = client.get(url)
        assert r.status_code == 200, url
        assert "<title>" in r.text and "local only" in r.text


def test_states_and_live(root, client):
    info = client.get("/api/runs/demo").json()
    states = {s["name"]: (s["state"], s["live"]) for s in info["stages"]}
    assert states["sft"] == ("complete", False)
    assert states["ppo"] == (
        "interrupted",
        True,
    )  # metrics just written, no COMPLETE marker
    assert states["eval"][0] == "absent"
    old = time.time() - 120
    os.utime(root / "demo" / "ppo" / "metrics.jsonl", (old, old))
    info = client.get("/api/runs/demo").json()
    assert {s["name"]: s["live"] for s in info["stages"]}["ppo"] is False


def test_metrics_series_follow_the_file(root, client):
    body = client.get("/api/runs/demo/metrics").json()
    ppo = body["stages"]["ppo"]["series"]
    assert {"score", "kl", "beta", "value/loss", "policy/clipfrac"} <= set(ppo)
    assert set(body["stages"]["sft"]["series"]["loss"]) == {"train", "eval"}
    assert {"loss", "rewards/margin", "rewards/accuracy"} <= set(body["stages"]["dpo"]["series"])
    n = len(ppo["kl"]["train"][0])
    with open(root / "demo" / "ppo" / "metrics.jsonl", "a") as fh:  # a trainer in another process logs a step
        fh.write(json.dumps({"step": n + 1, "split": "train", "kl": 9.0}) + "\n")
    xs, ys = client.get("/api/runs/demo/metrics").json()["stages"]["ppo"]["series"]["kl"]["train"]
    assert xs[-1] == n + 1 and ys[-1] == 9.0


def test_run_page_shows_config_explanation_and_figures(root, client):
    (root / "demo" / "report").mkdir(exist_ok=True)
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 32
    (root / "demo" / "report" / "curves.png").write_bytes(png)
    text = client.get("/runs/demo").text
    assert "config.yaml" in text and "lr: 1e-4" in text
    assert "Bradley" in text and "log σ" in text
    assert "/runs/demo/figures/curves.png" in text
    r = client.get("/runs/demo/figures/curves.png")
    assert r.status_code == 200 and r.content == png


@pytest.mark.parametrize(
    "url",
    [
        "/runs/..%2F..%2Fetc",
        "/runs/..%2F..%2Fetc/ppo/rollouts",
        "/runs/demo/..%2F..%2Fetc/rollouts",
        "/runs/demo/figures/..%2F..%2Fetc%2Fpasswd",
        "/runs/demo/figures/run.json",
        "/runs/nope",
        "/runs/demo/sft/rollouts",
        "/runs/demo/ppo/rollouts?step=99",
        "/api/runs/demo/ppo/rollouts/99",
        "/simulator?run=..",
        "/label?kind=other",
        "/no/such/page",
    ],
)
def test_bad_ids_are_404_pages_not_tracebacks(client, url):
    r = client.get(url)
    assert r.status_code == 404, url
    assert "Traceback" not in r.text and "root:" not in r.text


def test_ids_are_looked_up_not_joined(root):
    with pytest.raises(runsview.NotFound):
        runsview.run_folder(root, "../" + root.name)
    with pytest.raises(runsview.NotFound):
        runsview.stage_folder(root, "demo", "../demo")


def test_model_text_is_escaped_in_pages_and_json_blocks(client):
    for url in ["/runs/demo/ppo/rollouts", "/simulator"]:
        text = client.get(url).text
        assert "<script>window.__pwned" not in text
        assert "</script><img" not in text
    # the rollout's XSS token travels as JSON inside a data block, with < and > escaped
    text = client.get("/runs/demo/ppo/rollouts").text
    assert "\\u003cscript\\u003ewindow.__pwned" in text


def test_writes_need_the_session_token(client):
    body = {
        "run": "demo",
        "prompt": "hi",
        "n": 6,
        "beta": 1.0,
        "mix": {"gold:length": 1.0},
    }
    assert client.post("/api/simulate", json=body).status_code == 403
    assert client.post("/api/simulate", json=body, headers={"X-Alignlab-Token": "0" * 64}).status_code == 403
    tok = token_of(client)
    assert client.post("/api/simulate", json=body, headers={"X-Alignlab-Token": tok}).status_code == 200
    other = TestClient(client.app)  # another browser: its own cookie, so this token is not valid for it
    assert other.post("/api/simulate", json=body, headers={"X-Alignlab-Token": tok}).status_code == 403


def test_foreign_host_header_is_refused(root, backend):
    app = create_app(root, None, backend=backend)  # default: loopback names only
    with TestClient(app, base_url="http://evil.example") as c:
        assert c.get("/").status_code == 400
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/").status_code == 200


def test_simulate_samples_once_and_reweights(client, backend):
    tok = token_of(client, "/simulator")
    h = {"X-Alignlab-Token": tok}
    out = []
    for beta in [0.05, 0.3, 1.0, 5.0, 50.0]:
        body = {
            "run": "demo",
            "prompt": "egg?",
            "n": 12,
            "beta": beta,
            "mix": {"gold:length": 1.0},
        }
        r = client.post("/api/simulate", json=body, headers=h)
        assert r.status_code == 200, r.text
        out.append(r.json())
    assert [c[0] for c in backend.calls].count("sample") == 1  # cached across β
    assert [c[0] for c in backend.calls].count("score") == 1
    kls = [o["kl"] for o in out]
    rs = [o["expected_reward"] for o in out]
    assert kls == sorted(kls, reverse=True) and rs == sorted(rs, reverse=True)
    assert out[-1]["kl"] < 0.01 and out[0]["kl"] <= out[0]["max_kl"] + 1e-9
    assert out[-1]["expected_reward"] == pytest.approx(out[-1]["ref_reward"], abs=0.02)
    assert len(out[0]["curve"]) == 41 and {
        "kl",
        "expected_reward",
        "beta",
        "ess",
    } <= set(out[0]["curve"][0])
    assert [p["name"] for p in out[0]["eval_points"]] == ["sft", "dpo", "ppo"]
    # a weighted mix scores the second component once, then recombines
    body = {
        "run": "demo",
        "prompt": "egg?",
        "n": 12,
        "beta": 1.0,
        "mix": {"gold:length": 0.5, "gold:polite": 2.0},
    }
    assert client.post("/api/simulate", json=body, headers=h).status_code == 200
    assert [c[0] for c in backend.calls].count("score") == 2


@pytest.mark.parametrize(
    "patch",
    [
        {"beta": 0},
        {"beta": "x"},
        {"n": 1},
        {"n": 100000},
        {"mix": {}},
        {"mix": {"gold:nope": 1}},
        {"run": "nope"},
    ],
)
def test_simulate_rejects_bad_input(client, patch):
    body = {
        "run": "demo",
        "prompt": "egg?",
        "n": 6,
        "beta": 1.0,
        "mix": {"gold:length": 1.0},
        **patch,
    }
    r = client.post("/api/simulate", json=body, headers={"X-Alignlab-Token": token_of(client)})
    assert r.status_code in (400, 404), r.text
    assert "error" in r.json()


def test_answer_side_by_side(client):
    r = client.post(
        "/api/answer",
        json={"run": "demo", "prompt": "hi"},
        headers={"X-Alignlab-Token": token_of(client)},
    )
    assert r.status_code == 200
    assert list(r.json()["answers"]) == ["sft", "ppo", "dpo"]


def test_backend_errors_are_messages(root):
    class Broken(FakeBackend):
        def sample(self, run, prompt, n, seed):
            raise RuntimeError("the model exploded")

    app = create_app(root, None, backend=Broken(), allowed_hosts=["testserver"])
    with TestClient(app, raise_server_exceptions=False) as c:
        body = {
            "run": "demo",
            "prompt": "egg?",
            "n": 6,
            "beta": 1.0,
            "mix": {"gold:length": 1.0},
        }
        r = c.post("/api/simulate", json=body, headers={"X-Alignlab-Token": token_of(c)})
        assert r.status_code == 500 and "the model exploded" in r.json()["error"]


def test_model_backend_lists_components_without_loading_models(root):
    from alignlab.web.backend import ModelBackend

    (root / "demo" / "reward" / "final").mkdir(parents=True)
    comps = [c["id"] for c in ModelBackend(root).components("demo")]
    assert "rm:reward" in comps
    assert any(c.startswith(("gold:", "rule:")) for c in comps)


def test_labelling_without_a_store_says_how_to_open_one(client):
    assert "--store" in client.get("/label").text
    assert client.get("/api/label/next?annotator=x").status_code == 409


def test_serve_command_parses_and_defaults_to_loopback():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_serve_command(sub)
    args = parser.parse_args(["serve", "--runs", "r", "--port", "0"])
    assert args.host == "127.0.0.1" and args.runs == "r" and args.port == 0 and callable(args.func)


def test_empty_runs_folder(tmp_path, backend):
    app = create_app(tmp_path / "missing", None, backend=backend, allowed_hosts=["testserver"])
    with TestClient(app) as c:
        assert "No runs" in c.get("/").text
        assert c.get("/simulator").status_code == 200


def test_interrupted_rollout_line_is_skipped(root, client):
    path = runs.StageFolder(root / "demo" / "ppo").rollout_path(3)
    with open(path, "a") as fh:
        fh.write('{"step": 3, "prompt": "cut')  # a crash mid-write
    assert len(client.get("/api/runs/demo/ppo/rollouts/3").json()["rows"]) == 4
    assert XSS in client.get("/api/runs/demo/ppo/rollouts/3").json()["rows"][0]["tokens"]


def test_eval_points_from_policies_when_the_frontier_has_none(root):
    runs.atomic_write_json(
        root / "demo" / "eval" / "eval.json",
        {
            "schema": 1,
            "kl_estimator": "k3",
            "policies": {
                "sft": {"gold": {"mean": 0.1}, "kl": None},
                "ppo": {"gold": {"mean": 1.0}, "kl": {"k1": {"mean": 2.0}, "k3": {"mean": 1.5}}},
            },
            "frontier": {"points": [{"name": "ppo", "kl": None, "gold": 1.0}], "checkpoints": []},
        },
    )
    assert runsview.eval_points(root, "demo") == [{"name": "ppo", "kl": 1.5, "reward": 1.0}]
    runs.atomic_write_text(root / "demo" / "eval" / "eval.json", "{not json")
    assert runsview.eval_points(root, "demo") == []


def test_malformed_requests_are_plain_errors(client):
    assert client.get("/api/runs/demo/ppo/rollouts/abc").status_code == 404
    r = client.get("/runs/demo/ppo/rollouts?step=abc")
    assert r.status_code == 400 and "step" in r.text and "Traceback" not in r.text
    assert client.get("/api/label/next").status_code == 400  # no annotator (and no store either)


def test_a_run_named_like_markup_is_escaped_and_reachable(root, client):
    name = "x<b>&'\"y"
    make_demo_run(root, name=name)
    text = client.get("/").text
    assert "x<b>&" not in text and "x&lt;b&gt;&amp;&#x27;&quot;y" in text
    from urllib.parse import quote

    r = client.get("/runs/" + quote(name, safe=""))
    assert r.status_code == 200 and "x<b>" not in r.text
