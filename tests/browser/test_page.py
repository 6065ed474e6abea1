"""The try-it page in a real headless Chromium (Debian's, driven by Playwright) against a real service:
uvicorn, the bundled Redis, one worker process and the shipped demo detectors.

Screenshots are kept in test-artifacts/ (ignored by git); README.md shows two of them from docs/images/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis import Redis

from deepfake_guard.embedded import EmbeddedRedis
from models.checkpoint import DEMO_CHECKPOINTS
from tests.conftest import ROOT, Processes, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
DEMO_IMAGE = ROOT / "app" / "static" / "demo" / "demo-fake.png"
TIMEOUT_MS = 120_000
#: DIP steps of the purification: ~3 s on one CPU core at 64 x 64, long enough for the bar to move between polls.
DIP_STEPS = 150
#: Records every value the purification progress bar shows (its aria-valuenow, in percent).
WATCH_PROGRESS = """bar => {
  window.progressSeen = [];
  new MutationObserver(() => window.progressSeen.push(Number(bar.getAttribute("aria-valuenow"))))
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
}"""


def missing(message: str) -> None:
    """Without a browser the test is skipped on a developer's machine, and fails under CI (.ci/run sets CI)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError as exc:
        missing(f"Playwright is not installed ({exc}): install the dev extras")
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def service(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API and a worker with the shipped demo detectors (checkpoints/), on a flushed Redis."""
    conn = Redis.from_url(redis_server.url)
    conn.flushall()
    procs = Processes(tmp_path_factory.mktemp("browser-service"))
    try:
        env = service_env(redis_server.url, DEMO_CHECKPOINTS, DFG_HEARTBEAT_S="1")
        base = procs.api(env)
        procs.worker(env)
        yield base
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()
        conn.flushall()
        conn.close()


def outside(base: str, urls: list[str]) -> list[str]:
    """The requested URLs that are not the service's own (data: and blob: URLs are the page's own bytes)."""
    host = urlsplit(base).netloc
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != host]


def shoot(page: Any, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def open_page(browser: Any, base: str, width: int, height: int) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='true']")
    assert not errors, errors
    return context, page, requested


def verdicts(page: Any, selector: str) -> dict[str, str]:
    cards = page.locator(f"{selector} .verdict")
    return {
        str(cards.nth(i).get_attribute("data-model")): str(cards.nth(i).get_attribute("data-label"))
        for i in range(cards.count())
    }


def test_detect_attack_purify_at_desktop_width(browser: Any, service: str) -> None:
    context, page, requested = open_page(browser, service, 1280, 900)
    page.set_input_files("#file", str(DEMO_IMAGE))
    page.locator("#verdicts .verdict").nth(1).wait_for()  # both detectors answered
    clean = verdicts(page, "#verdicts")
    assert clean == {"demo-resnet18": "fake", "demo-vgg16": "fake"}, clean
    assert "sha256" in page.inner_text("#verdicts")

    page.select_option("#attack-method", "fgsm")
    page.fill("#attack-eps", "0.03")
    page.select_option("#attack-target", "demo-resnet18")
    page.click("#attack-btn")
    page.wait_for_selector("#attack-result:not([hidden])")
    attacked = page.get_attribute("#attack-verdicts .verdict[data-model='demo-resnet18']", "data-label")
    assert attacked == "real", page.inner_text("#attack-result")  # the verdict changed: fake -> real
    assert "Success" in page.inner_text("#attack-summary")
    assert page.get_attribute("#attack-adv", "src", timeout=1000).startswith("blob:")
    assert "magnified" in page.inner_text("#attack-pert-caption")

    page.check("#purify-adv-choice")
    page.select_option("#purify-method", "dip")
    page.fill("#purify-iterations", str(DIP_STEPS))
    page.eval_on_selector("#purify-progress .bar", WATCH_PROGRESS)
    page.click("#purify-btn")
    page.wait_for_selector("#purify-result:not([hidden])")
    seen = page.evaluate("window.progressSeen")
    assert seen[0] == 0 and seen[-1] == 100 and seen == sorted(seen), seen  # from empty to full, never back
    assert page.eval_on_selector("#purify-progress .fill", "e => e.style.width") == "100%"
    assert re.search(r"finished: \d+ steps", page.inner_text("#purify-progress"))
    assert set(verdicts(page, "#purify-verdicts")) == {"demo-resnet18", "demo-vgg16"}
    assert page.get_attribute("#purify-download", "href").startswith("blob:")
    assert page.is_hidden("#error")

    shoot(page, "page-desktop.png")
    assert not outside(service, requested), outside(service, requested)
    context.close()


def test_phone_width_has_no_horizontal_overflow(browser: Any, service: str) -> None:
    context, page, requested = open_page(browser, service, 390, 844)
    page.click("#demo-btn")
    page.locator("#verdicts .verdict").nth(1).wait_for()  # both detectors answered
    page.click("#attack-btn")
    page.wait_for_selector("#attack-result:not([hidden])")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow == 0, f"the page is {overflow} px wider than a 390 px viewport"
    shoot(page, "page-phone.png")
    assert not outside(service, requested), outside(service, requested)
    context.close()


def test_api_errors_show_their_problem_detail(browser: Any, service: str) -> None:
    context, page, _ = open_page(browser, service, 1280, 900)
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"})
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "422" in text and "not a recognisable image" in text, text
    context.close()


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_with_the_network_unplugged(browser: Any, service: str, path: str, rendered: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    blocked: list[str] = []
    host = urlsplit(service).netloc

    def only_loopback(route: Any) -> None:
        if urlsplit(route.request.url).netloc == host or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_loopback)
    page = context.new_page()
    page.goto(service + path)
    page.wait_for_selector(rendered)
    text = page.inner_text("body")
    assert "/detect" in text and "/purify" in text, text[:2000]
    shoot(page, f"docs{path.replace('/', '-')}.png", full_page=False)
    assert not blocked, f"{path} asked for other hosts: {blocked}"
    context.close()
