"""Browser tests: real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

Set-up once per machine: ``apt-get install -y chromium`` (``playwright install`` is not needed:
the tests launch that binary). Without it every test here is skipped, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
SKIP_REASON = (
    f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium) and the playwright and "
    "pytest-playwright packages"
)


def _available() -> bool:
    if not CHROMIUM.exists():
        return False
    try:
        import playwright.sync_api  # noqa: F401
        import pytest_playwright  # noqa: F401  (the page fixture)
    except ImportError:
        return False
    return True


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (needs /usr/bin/chromium)")


def pytest_collection_modifyitems(config, items):
    if _available():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, pointed at Debian's Chromium (no sandbox: tests may run as root)."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "args": ["--no-sandbox"], "timeout": 30_000}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """A live server over a hand-made run (ppo still "training") and a label store with 10 pairs and a ranking."""
    pytest.importorskip("fastapi")
    store_mod = pytest.importorskip("alignlab.feedback.store", reason="alignlab.feedback.store is not in this checkout")
    from alignlab.web.app import create_app
    from alignlab.web.testing import XSS, FakeBackend, make_demo_run, serve

    root = tmp_path_factory.mktemp("web")
    make_demo_run(root / "runs", complete=False)
    store = store_mod.LabelStore(root / "labels.sqlite")
    for i in range(10):
        pid = store.add_prompt(f"Pair prompt {i}: how long do I boil an egg?")
        a = store.add_response(pid, XSS if i == 0 else f"About {6 + i} minutes.", policy="sft")
        b = store.add_response(pid, f"Put it in boiling water for {i + 5} minutes. Hope this helps!", policy="ppo")
        task = store.add_task(pid, [a, b], kind="pair")
        store.add_label(task, "bob", choice="B" if i % 3 else "A")  # a second annotator, for agreement
    pid = store.add_prompt("Rank these answers to: what is a roux?")
    ids = [
        store.add_response(pid, text)
        for text in [
            "Flour cooked in fat, used to thicken sauces.",
            "A French word.",
            "Equal parts butter and flour cooked together; the base of béchamel and gumbo. Hope this helps!",
            "I don't know.",
        ]
    ]
    store.add_task(pid, ids, kind="ranking")
    backend = FakeBackend()
    app = create_app(root / "runs", root / "labels.sqlite", backend=backend)
    with serve(app) as url:
        yield {"url": url, "root": root, "runs": root / "runs", "store": store, "backend": backend}
