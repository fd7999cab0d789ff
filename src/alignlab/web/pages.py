"""Server-rendered HTML: one function per page. Every value from a run, a store or a request goes
through :func:`esc` (HTML) or :func:`json_script` (data for the page's script); scripts read data
from those blocks and write text with ``textContent``, never ``innerHTML``.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

STATIC = "/static"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def url_id(value: str) -> str:
    """An id as a URL path segment."""
    return quote(value, safe="")


def json_script(data: Any, element_id: str) -> str:
    """Data for a page's script in a ``<script type="application/json">`` block that no value can close."""
    text = json.dumps(data, ensure_ascii=False, default=str)
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="{esc(element_id)}">{text}</script>'


NAV = [
    ("/", "Runs"),
    ("/simulator", "Simulator"),
    ("/label", "Label pairs"),
    ("/label?kind=ranking", "Rank"),
]


def layout(
    title: str,
    body: str,
    *,
    token: str,
    scripts: tuple[str, ...] = (),
    css: tuple[str, ...] = (),
) -> str:
    links = "".join(f'<a href="{esc(href)}">{esc(name)}</a>' for href, name in NAV)
    styles = "".join(f'<link rel="stylesheet" href="{STATIC}/{esc(c)}">' for c in ("style.css", *css))
    js = "".join(f'<script src="{STATIC}/{esc(s)}"></script>' for s in ("common.js", *scripts))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="alignlab-token" content="{esc(token)}">'
        f"<title>{esc(title)} · alignlab</title>{styles}</head><body>"
        f'<header><span class="brand">alignlab</span><nav>{links}</nav>'
        '<span class="local">local only</span></header>'
        f"<main>{body}</main>{js}</body></html>"
    )


def state_badge(state: str, live: bool) -> str:
    out = f'<span class="badge {esc(state)}">{esc(state)}</span>'
    if live:
        out += '<span class="badge live">live</span>'
    return out


def not_found(message: str, *, token: str) -> str:
    body = f'<h1>Not found</h1><p class="error">{esc(message)}</p><p><a href="/">Back to the runs</a></p>'
    return layout("Not found", body, token=token)


def error_page(message: str, *, token: str) -> str:
    body = f'<h1>Something went wrong</h1><p class="error">{esc(message)}</p><p><a href="/">Back to the runs</a></p>'
    return layout("Error", body, token=token)


# ----------------------------------------------------------------------------- runs dashboard
def runs_index(runs: list[dict], root: str, *, token: str) -> str:
    if not runs:
        body = (
            f"<h1>Runs</h1><p>No runs under <code>{esc(root)}</code> yet. Start one with <code>alignlab run</code>.</p>"
        )
        return layout("Runs", body, token=token)
    rows = []
    for r in runs:
        stages = " ".join(
            f'<span class="stage" data-stage="{esc(s["name"])}">{esc(s["name"])} {state_badge(s["state"], s["live"])}</span>'
            for s in r["stages"]
        )
        rows.append(
            f'<tr data-run="{esc(r["id"])}"><td><a href="/runs/{esc(url_id(r["id"]))}">{esc(r["id"])}</a></td>'
            f"<td>{esc(r.get('profile') or '')}</td><td>{esc(r.get('created') or '')}</td>"
            f'<td class="stages">{stages}</td></tr>'
        )
    body = (
        f"<h1>Runs</h1><p class=muted>Under <code>{esc(root)}</code>; states refresh every few seconds.</p>"
        '<table class="runs"><thead><tr><th>run</th><th>profile</th><th>created</th><th>stages</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return layout("Runs", body, token=token, scripts=("index.js",))


def run_page(info: dict, configs: dict[str, str | None], *, token: str) -> str:
    rid = info["id"]
    cards = []
    for s in info["stages"]:
        name = s["name"]
        links = []
        if s["rollout_steps"]:
            links.append(f'<a href="/runs/{esc(url_id(rid))}/{esc(url_id(name))}/rollouts">rollout inspector</a>')
        cfg = configs.get(name)
        cfg_html = (
            f"<details><summary>config.yaml</summary><pre class=config>{esc(cfg)}</pre></details>"
            if cfg is not None
            else '<p class="muted">no config.yaml</p>'
        )
        about = (
            f'<p class="about">{esc(s["about"])}</p><p class="formula"><code>{esc(s["formula"])}</code></p>'
            if s["about"]
            else ""
        )
        cards.append(
            f'<section class="stage-card" id="stage-{esc(name)}" data-stage="{esc(name)}">'
            f'<h2>{esc(name)} <span class="state">{state_badge(s["state"], s["live"])}</span></h2>'
            f'<div class="stage-body"><div class="charts" data-stage="{esc(name)}"></div>'
            f"<aside>{about}<p>{' · '.join(links)}</p>{cfg_html}</aside></div></section>"
        )
    figs = "".join(
        f'<figure><img src="/runs/{esc(url_id(rid))}/figures/{esc(url_id(f))}" alt="{esc(f)}"><figcaption>{esc(f)}</figcaption></figure>'
        for f in info["figures"]
    )
    figs_html = f'<section class="figures"><h2>Report figures</h2>{figs}</section>' if figs else ""
    body = (
        f"<h1>Run <code>{esc(rid)}</code></h1>"
        f"<p class=muted>profile {esc(info.get('profile') or '?')} · created {esc(info.get('created') or '?')} · "
        f'<a href="/simulator?run={esc(url_id(rid))}">simulator</a> · charts poll every 3 s</p>'
        f"{''.join(cards)}{figs_html}{json_script({'run': rid}, 'page-data')}"
    )
    return layout(
        f"Run {rid}",
        body,
        token=token,
        scripts=("uPlot.iife.min.js", "dashboard.js"),
        css=("uPlot.min.css",),
    )


# ----------------------------------------------------------------------------- rollout inspector
def inspector(data: dict, *, token: str) -> str:
    rid, stage = data["run"], data["stage"]
    body = (
        f'<h1>Rollouts · <a href="/runs/{esc(url_id(rid))}">{esc(rid)}</a> / {esc(stage)}</h1>'
        '<div class="toolbar">'
        '<button id="prev" title="previous step (←)">← prev</button>'
        '<span>step <b id="step"></b> <span id="step-pos" class="muted"></span></span>'
        '<button id="next" title="next step (→)">next →</button>'
        '<span class="sep"></span>colour tokens by '
        '<label><input type="radio" name="field" value="kl" checked> KL</label>'
        '<label><input type="radio" name="field" value="logprobs"> log-prob</label>'
        '<label><input type="radio" name="field" value="advantages"> advantage</label>'
        '<span id="legend" class="legend"></span></div>'
        '<p class="muted">Keys: ← / → step through the rollouts; k / l / a pick the colouring. '
        "Hover a token for its values.</p>"
        '<div id="rows"></div>'
        f"{json_script(data, 'page-data')}"
    )
    return layout(f"Rollouts {rid}/{stage}", body, token=token, scripts=("inspector.js",))


# ----------------------------------------------------------------------------- simulator
def simulator(data: dict, *, token: str) -> str:
    runs = "".join(
        f'<option value="{esc(r)}"{" selected" if r == data.get("run") else ""}>{esc(r)}</option>' for r in data["runs"]
    )
    suggestions = "".join(f'<option value="{esc(p)}">' for p in data.get("prompts", []))
    body = (
        "<h1>Simulator: the KL-regularised optimum</h1>"
        '<p class="muted">N responses are sampled once from π_ref and scored; for a β each is reweighted by '
        "w<sub>i</sub> ∝ exp(r<sub>i</sub>/β), which estimates π* ∝ π_ref·exp(r/β) on the samples: "
        "E<sub>w</sub>[r], KL(π*‖π_ref) ≈ Σ w<sub>i</sub> log(N w<sub>i</sub>), ESS = 1/Σ w<sub>i</sub>².</p>"
        '<div class="sim-grid"><div class="controls">'
        f'<label>run <select id="run">{runs}</select></label>'
        f'<label>prompt <input id="prompt" list="prompt-list" value="{esc((data.get("prompts") or [""])[0])}">'
        f'<datalist id="prompt-list">{suggestions}</datalist></label>'
        '<label>samples N <input id="n" type="number" min="2" max="256" value="32"></label>'
        '<label>β <input id="beta" type="range" min="-2" max="2" step="0.01" value="0"> <b id="beta-value"></b></label>'
        '<fieldset id="components"><legend>reward = Σ weight · component</legend></fieldset>'
        '<button id="generate" title="sample from π_ref once, then draw a response from π*">Generate</button> '
        '<button id="resample" title="a fresh set of N samples from π_ref">new samples</button> '
        '<span id="status" class="muted"></span>'
        "</div>"
        '<div class="readout"><table><tbody>'
        '<tr><th>E<sub>w</sub>[r]</th><td id="expected-reward">–</td></tr>'
        '<tr><th>KL(π*‖π_ref)</th><td id="kl">–</td></tr>'
        '<tr><th>ESS</th><td id="ess">–</td></tr>'
        '<tr><th>E<sub>π_ref</sub>[r]</th><td id="ref-reward">–</td></tr>'
        "</tbody></table>"
        '<h3>Drawn response <span id="drawn-meta" class="muted"></span></h3><pre id="drawn" class="response"></pre>'
        "</div>"
        '<div class="frontier"><h3>Reward vs KL over β</h3><svg id="curve" viewBox="0 0 420 300" '
        'width="420" height="300" role="img" aria-label="reward against KL"></svg>'
        '<p class="muted">line: the optimum on these samples for β from 0.01 to 100; dot: the current β; '
        "squares: trained policies and checkpoints from eval/eval.json, at their gold reward "
        "(comparable with the line when the reward above is that gold).</p></div></div>"
        '<h3>Highest-weight distinct responses</h3><table class="top"><thead><tr><th>Σw</th><th>r</th><th>×</th><th>response</th></tr>'
        '</thead><tbody id="top"></tbody></table>'
        "<h2>Ask the trained policies</h2>"
        '<p class="muted">The same prompt to each final model (SFT, PPO, DPO), greedy, side by side.</p>'
        '<div class="ask"><input id="ask-prompt" placeholder="a prompt"><button id="ask">Ask</button>'
        ' <span id="ask-status" class="muted"></span></div><div id="answers" class="answers"></div>'
        f"{json_script(data, 'page-data')}"
    )
    return layout("Simulator", body, token=token, scripts=("simulator.js",))


# ----------------------------------------------------------------------------- labelling
def label_page(data: dict, *, token: str) -> str:
    kind = data["kind"]
    if not data.get("store"):
        body = (
            "<h1>Labelling</h1><p>No label store is open. Start the server with "
            "<code>alignlab serve --store labels.sqlite</code>.</p>"
        )
        return layout("Labelling", body, token=token)
    runs = "".join(f'<option value="{esc(r)}">{esc(r)}</option>' for r in data.get("runs", []))
    if kind == "pair":
        help_text = "Keys: <kbd>1</kbd>/<kbd>a</kbd> A better · <kbd>2</kbd>/<kbd>b</kbd> B better · <kbd>t</kbd> tie · <kbd>s</kbd> skip"
        task_html = '<div id="pair" class="pair"></div>'
    else:
        help_text = (
            "Rank best to worst: press the number of the best response, then the next… (or drag the cards); "
            "<kbd>Backspace</kbd> undoes, <kbd>Enter</kbd> submits, <kbd>s</kbd> skips."
        )
        task_html = '<ol id="ranking" class="ranking"></ol>'
    body = (
        f"<h1>{'Which response is better?' if kind == 'pair' else 'Rank the responses'}</h1>"
        '<div class="toolbar"><label>annotator <input id="annotator" autocomplete="off"></label>'
        '<span>progress <b id="progress">–</b></span>'
        f'<a href="/api/label/export/preferences.jsonl">export preferences</a>'
        f'<a href="/api/label/export/rankings.jsonl">export rankings</a>'
        f'<label>tasks from run <select id="task-run">{runs}</select></label>'
        '<button id="make-tasks">make tasks from its samples</button></div>'
        f'<p class="muted">{help_text}</p>'
        '<div id="task"><h3>Prompt</h3><pre id="prompt" class="prompt"></pre>'
        f"{task_html}"
        '<label class="reason">reason (optional) <input id="reason" autocomplete="off"></label>'
        + ('<button id="submit">Submit ranking (Enter)</button>' if kind != "pair" else "")
        + '</div><p id="status" class="muted"></p>'
        '<h2>Agreement between annotators</h2><div id="agreement" class="muted">–</div>'
        f"{json_script(data, 'page-data')}"
    )
    return layout("Labelling", body, token=token, scripts=("label.js",))
