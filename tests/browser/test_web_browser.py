"""Every view of ``alignlab serve`` in headless Chromium: what a user sees and does, keyboard included.

Screenshots of each view go to ``tests/browser/artifacts/`` for a human to look at.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.browser


def pwned(page: Page):
    return page.evaluate("window.__pwned")


def test_runs_dashboard_and_live_charts(page: Page, site, artifacts):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["url"] + "/")
    row = page.locator('tr[data-run="demo"]')
    expect(row).to_be_visible()
    expect(row.locator('[data-stage="sft"] .badge.complete')).to_be_visible()
    expect(row.locator('[data-stage="ppo"] .badge.live')).to_be_visible()
    page.screenshot(path=str(artifacts / "runs.png"), full_page=True)

    page.click("text=demo")
    expect(page).to_have_url(re.compile(r"/runs/demo$"))
    for stage, keys in {
        "sft": ["loss", "nll"],
        "reward": ["loss", "rewards/accuracy"],
        "dpo": ["loss", "rewards/margin", "rewards/accuracy"],
        "ppo": ["score", "kl", "beta", "value/loss", "policy/clipfrac"],
    }.items():
        card = page.locator(f'section.stage-card[data-stage="{stage}"]')
        for key in keys:
            expect(card.locator(f'.chart[data-key="{key}"] canvas')).to_have_count(1)
        expect(card.locator("aside .formula")).to_be_visible()
    expect(page.locator('section[data-stage="ppo"] .badge.live')).to_be_visible()
    expect(page.locator("text=rollout inspector")).to_be_visible()
    page.locator('section[data-stage="sft"] summary').click()
    expect(page.locator('section[data-stage="sft"] pre.config')).to_contain_text("lr: 1e-4")

    # a trainer in another process logs a new metric: its chart appears at the next poll
    with open(site["runs"] / "demo" / "ppo" / "metrics.jsonl", "a") as fh:
        fh.writelines(
            json.dumps({"step": step, "split": "train", "entropy": 2.0 - 0.1 * step}) + "\n" for step in (21, 22, 23)
        )
    expect(page.locator('section[data-stage="ppo"] .chart[data-key="entropy"] canvas')).to_have_count(1, timeout=10_000)
    fig = page.locator('.figures img[alt="loss.png"]')
    expect(fig).to_be_visible()
    assert fig.evaluate("e => e.complete && e.naturalWidth") == 240
    page.screenshot(path=str(artifacts / "run.png"), full_page=True)
    assert not errors


def test_rollout_inspector_keys_and_colouring(page: Page, site, artifacts):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["url"] + "/runs/demo/ppo/rollouts")
    expect(page.locator("#step")).to_have_text("3")
    rollouts = page.locator("article.rollout")
    expect(rollouts).to_have_count(4)
    # the response with <script> is shown as text and never runs
    expect(rollouts.first.locator(".tokens")).to_contain_text("<script>window.__pwned = 1</script>")
    assert pwned(page) is None
    first_tok = rollouts.nth(1).locator(".tok").nth(1)
    kl_colour = first_tok.evaluate("e => e.style.background")
    page.keyboard.press("a")  # colour by advantage
    expect(page.locator('input[value="advantages"]')).to_be_checked()
    assert first_tok.evaluate("e => e.style.background") != kl_colour
    assert "advantages" in first_tok.get_attribute("title")
    page.screenshot(path=str(artifacts / "inspector.png"), full_page=True)
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#step")).to_have_text("2")
    expect(rollouts.first.locator(".prompt")).to_contain_text("step 2")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#step")).to_have_text("1")
    page.keyboard.press("ArrowLeft")  # already at the first step
    expect(page.locator("#step")).to_have_text("1")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#step")).to_have_text("2")
    assert not errors


def _set_beta(page: Page, log10_beta: float) -> tuple[float, float]:
    before = page.locator("#kl").inner_text() + page.locator("#expected-reward").inner_text()
    page.eval_on_selector(
        "#beta", "(e, v) => { e.value = String(v); e.dispatchEvent(new Event('input', {bubbles: true})); }", log10_beta
    )
    page.wait_for_function(
        "prev => document.querySelector('#kl').textContent + document.querySelector('#expected-reward').textContent"
        " !== prev && document.querySelector('#status').textContent.startsWith('N =')",
        arg=before,
        timeout=10_000,
    )
    return float(page.locator("#kl").inner_text()), float(page.locator("#expected-reward").inner_text())


def test_simulator_beta_slider(page: Page, site, artifacts):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(site["url"] + "/simulator?run=demo")
    expect(page.locator("input.weight")).to_have_count(2)
    page.eval_on_selector("#beta", "e => { e.value = '-1.5'; e.dispatchEvent(new Event('input')); }")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("N = 32", timeout=10_000)
    kl, reward = float(page.locator("#kl").inner_text()), float(page.locator("#expected-reward").inner_text())
    seen = [(kl, reward)]
    for v in (-0.8, -0.2, 0.4, 1.0, 1.8):
        seen.append(_set_beta(page, v))
    kls, rewards = [s[0] for s in seen], [s[1] for s in seen]
    assert kls == sorted(kls, reverse=True) and kls[0] > kls[-1] + 0.5, seen
    assert rewards == sorted(rewards, reverse=True) and rewards[0] > rewards[-1], seen
    expect(page.locator("#curve polyline")).to_have_count(1)
    expect(page.locator("#curve circle#current")).to_have_count(1)
    expect(page.locator("#curve rect.checkpoint")).to_have_count(3)  # sft, dpo, ppo from eval/eval.json
    samples = [c for c in site["backend"].calls if c[0] == "sample"]
    assert len(samples) == 1, "samples from π_ref are drawn once and cached across β"
    page.click("#generate")  # another draw from π* on the same samples
    expect(page.locator("#status")).to_contain_text("draw 1")
    assert len([c for c in site["backend"].calls if c[0] == "sample"]) == 1
    page.click("#resample")  # a fresh set of samples
    expect(page.locator("#status")).to_contain_text("seed 1, draw 0")
    assert len([c for c in site["backend"].calls if c[0] == "sample"]) == 2
    # a weighted gold: move the second component's weight; the numbers follow
    page.eval_on_selector(
        'input.weight[data-component="gold:polite"]',
        "e => { e.value = '2'; e.dispatchEvent(new Event('input')); }",
    )
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('N =')")
    _set_beta(page, -0.3)
    # the prompt box: each trained policy answers, model text shown as text
    page.fill("#ask-prompt", "<b>bold?</b>")
    page.click("#ask")
    expect(page.locator(".answer")).to_have_count(3)
    expect(page.locator('.answer[data-stage="ppo"] pre')).to_have_text("ppo says: <b>bold?</b>")
    assert page.locator(".answer b").count() == 0
    assert pwned(page) is None
    page.screenshot(path=str(artifacts / "simulator.png"), full_page=True)
    assert not errors


def _wait_task_change(page: Page, before: str) -> None:
    page.wait_for_function("prev => document.querySelector('#status').textContent !== prev", arg=before, timeout=10_000)


def test_labelling_pairs_and_a_ranking_with_the_keyboard(page: Page, site, artifacts):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    store = site["store"]
    page.goto(site["url"] + "/label")
    page.fill("#annotator", "alice")
    page.keyboard.press("Tab")
    expect(page.locator("#progress")).to_have_text("0 / 10")
    expect(page.locator("#pair .card").first).to_contain_text("<script>window.__pwned = 1</script>")
    assert pwned(page) is None
    page.fill("#reason", "the second one answers")
    page.locator("body").click(position={"x": 5, "y": 5})  # leave the text box so keys are shortcuts
    page.screenshot(path=str(artifacts / "label_pair.png"), full_page=True)
    keys = ["2", "1", "a", "b", "t", "s", "2", "2", "1", "b"]
    for key in keys:
        before = page.locator("#status").inner_text()
        page.keyboard.press(key)
        _wait_task_change(page, before)
    expect(page.locator("#progress")).to_have_text("10 / 10")
    expect(page.locator("#status")).to_contain_text("nothing left")
    expect(page.locator("#agreement")).to_contain_text("cohen")  # alice and bob labelled the same ten pairs
    page.screenshot(path=str(artifacts / "label_done.png"), full_page=True)
    got = [
        (lab["task_id"], lab["choice"])
        for lab in store.labels()
        if lab["annotator"] == "alice" and lab["kind"] == "pair"
    ]
    expected = ["B", "A", "A", "B", "tie", "skip", "B", "B", "A", "B"]
    assert [c for _, c in sorted(got)] == expected
    assert next(lab["reason"] for lab in store.labels() if lab["annotator"] == "alice") == "the second one answers"

    page.goto(site["url"] + "/label?kind=ranking")  # the annotator's name is remembered
    expect(page.locator("#annotator")).to_have_value("alice")
    expect(page.locator("#ranking .card")).to_have_count(4)
    for key in ["3", "1", "4"]:
        page.keyboard.press(key)
    expect(page.locator("#ranking .card.ranked")).to_have_count(3)
    expect(page.locator("#ranking li").first).to_contain_text("béchamel")
    page.screenshot(path=str(artifacts / "label_ranking.png"), full_page=True)
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("nothing left")
    ranking = [lab["ranking"] for lab in store.labels() if lab["annotator"] == "alice" and lab["kind"] == "ranking"]
    assert ranking == [[2, 4, 1, 3]]  # rank of each response in the task's order; the third is best
    exported = page.request.get(site["url"] + "/api/label/export/rankings.jsonl").text()
    assert json.loads(exported.splitlines()[0])["ranking"] == [2, 4, 1, 3]
    assert not errors


def test_bad_ids_are_404_pages(page: Page, site, artifacts):
    for path in [
        "/runs/..%2F..%2Fetc",
        "/runs/..%2F..%2Fetc/ppo/rollouts",
        "/runs/demo/..%2F..%2Fetc/rollouts",
        "/runs/nope",
    ]:
        response = page.goto(site["url"] + path)
        assert response.status == 404, path
        expect(page.locator("h1")).to_have_text("Not found")
        assert "Traceback" not in page.content()
    page.screenshot(path=str(artifacts / "not_found.png"), full_page=True)


def test_writes_without_the_page_token_are_refused(page: Page, site):
    page.goto(site["url"] + "/label")
    status = page.evaluate(
        """async () => (await fetch('/api/label', {method: 'POST', headers: {'Content-Type': 'application/json'},
             body: JSON.stringify({task_id: 1, annotator: 'mallory', choice: 'A'})})).status"""
    )
    assert status == 403
    assert not [lab for lab in site["store"].labels() if lab["annotator"] == "mallory"]


def test_ranking_by_drag_and_drop(page: Page, site):
    page.goto(site["url"] + "/label?kind=ranking")
    page.fill("#annotator", "carol")
    page.keyboard.press("Tab")
    cards = page.locator("#ranking .card")
    expect(cards).to_have_count(4)
    expect(page.locator("#ranking .card.ranked")).to_have_count(0)
    cards.nth(2).drag_to(cards.nth(0))  # the third answer (béchamel) to the top: dragging ranks them all
    expect(page.locator("#ranking .card.ranked")).to_have_count(4)
    expect(page.locator("#ranking li").first).to_contain_text("béchamel")
    page.click("#submit")
    expect(page.locator("#status")).to_contain_text("nothing left")
    ranking = [lab["ranking"] for lab in site["store"].labels() if lab["annotator"] == "carol"]
    assert ranking == [[2, 3, 1, 4]]
