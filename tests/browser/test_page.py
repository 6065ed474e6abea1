"""The try-it page in a real headless Chromium (Debian's, driven by Playwright) against a real service:
uvicorn, the bundled Redis, one worker process and the shipped demo detectors.

Screenshots are kept in test-artifacts/ (ignored by git); README.md shows three of them from docs/images/.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from redis import Redis
from skimage import data

from app.auth import hash_key
from deepfake_guard.embedded import EmbeddedRedis
from models.checkpoint import DEMO_CHECKPOINTS
from tests.conftest import ROOT, Processes, make_tiny_checkpoint, redis_in_tmp, service_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
DEMO_IMAGE = ROOT / "app" / "static" / "demo" / "demo-fake.png"
TIMEOUT_MS = 120_000
#: DIP steps of the purification: ~3 s on one CPU core at 64 x 64, long enough for the bar to move between polls.
DIP_STEPS = 150
#: The key of the service started with API keys on (its sha256 is in DFG_API_KEYS).
API_KEY = "page-test-key"
#: The calibrated copy of demo-resnet18.
CALIBRATED = "calibrated-resnet18"
#: The face in skimage's astronaut (512 x 512), as found by hand (tests/app/test_faces_api.py).
ASTRONAUT_FACE = (222, 125)
#: The key of the audit service (API keys on: the report links must carry it).
AUDIT_KEY = "audit-page-key"
#: An audit of 8 images at 32 px (quick profile, one eps) on one loaded CI core: minutes; no timing is asserted.
AUDIT_TIMEOUT_MS = 600_000
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


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, service: str) -> tuple[Path, float]:
    """A copy of demo-resnet18 whose checkpoint holds a fitted threshold above the demo fake's p_fake (which a 0.5
    cut calls fake), as ``import-detector --calibrate`` writes it (``metrics.calibration``): /detect calls it real."""
    answer = httpx.post(
        f"{service}/detect", files={"file": ("demo-fake.png", DEMO_IMAGE.read_bytes())}, data={"model": "demo-resnet18"}
    ).json()
    p = answer["results"][0]["p_fake"]
    assert 0.5 <= p < 1, answer  # a 0.5 cut calls it fake
    folder = tmp_path_factory.mktemp("calibrated")
    for ext in ("json", "safetensors"):  # renamed: only its training data's folder says it learnt on the demo data
        shutil.copy(DEMO_CHECKPOINTS / f"demo-resnet18.{ext}", folder / f"{CALIBRATED}.{ext}")
    meta = json.loads((folder / f"{CALIBRATED}.json").read_text())
    threshold = (p + 1) / 2
    meta["metrics"]["calibration"] = {"threshold": threshold, "target_fpr": 0.05}
    (folder / f"{CALIBRATED}.json").write_text(json.dumps(meta, indent=2))
    return folder, threshold


def start_api(tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> Iterator[str]:
    """A second API process (no worker: only /detect and synchronous attacks are asked of it)."""
    procs = Processes(tmp_path_factory.mktemp(name))
    try:
        yield procs.api(env)
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def calibrated_service(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory, calibrated: tuple[Path, float]
) -> Iterator[str]:
    env = service_env(redis_server.url, calibrated[0], DFG_DEFAULT_MODEL=CALIBRATED)
    yield from start_api(tmp_path_factory, "calibrated-service", env)


@pytest.fixture(scope="module")
def keyed_service(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo detectors with API keys on (app/auth.py)."""
    env = service_env(redis_server.url, DEMO_CHECKPOINTS, DFG_API_KEYS=hash_key(API_KEY))
    yield from start_api(tmp_path_factory, "keyed-service", env)


def png(pixels: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def outside(base: str, urls: list[str]) -> list[str]:
    """The requested URLs that are not the service's own (data: and blob: URLs are the page's own bytes)."""
    host = urlsplit(base).netloc
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != host]


def shoot(page: Any, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def open_page(
    browser: Any, base: str, width: int = 1280, height: int = 900, *, ready: bool = True
) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    if ready:
        page.wait_for_selector("body[data-ready='true']")
    assert not errors, errors
    return context, page, requested


def options(page: Any, select: str) -> list[str]:
    return list(page.eval_on_selector_all(f"{select} option", "os => os.map(o => o.value)"))


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
    # Both demo detectors say what their verdicts are worth (docs/DATA.md), and the threshold they were cut at.
    cards = page.locator("#verdicts .verdict")
    assert [cards.nth(i).get_attribute("data-demo") for i in range(2)] == ["true", "true"]
    assert "mean nothing" in page.inner_text("#verdicts .demo-note >> nth=0")
    assert cards.nth(0).get_attribute("data-threshold-source") == "default"
    assert "p_fake ≥ 0.5000 (the default: no calibrated threshold)" in page.inner_text("#verdicts")

    page.select_option("#attack-method", "fgsm")
    page.fill("#attack-param-eps", "8/255")
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
    page.fill("#purify-param-max_iterations", str(DIP_STEPS))
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


def test_a_refused_upload_clears_the_verdicts_and_disables_attack_and_purify(browser: Any, service: str) -> None:
    context, page, _ = open_page(browser, service)
    page.click("#demo-btn")
    page.locator("#verdicts .verdict").nth(1).wait_for()
    assert page.is_enabled("#attack-btn") and page.is_enabled("#purify-btn")
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image\n"})
    page.wait_for_selector("#error:not([hidden])")
    assert "422" in page.inner_text("#error")
    assert page.inner_text("#verdicts").strip() == ""  # no "Scoring...", no verdict of the previous image
    assert page.is_disabled("#attack-btn") and page.is_disabled("#purify-btn")
    page.click("#demo-btn")  # a valid image again: scored, and the buttons come back
    page.locator("#verdicts .verdict").nth(1).wait_for()
    page.wait_for_selector("#attack-btn:enabled")
    assert page.is_enabled("#purify-btn") and page.is_hidden("#error")
    context.close()


def test_the_attack_choices_are_the_registered_methods(browser: Any, service: str) -> None:
    declared = httpx.get(f"{service}/methods").json()
    attacks = [a["name"] for a in declared["attacks"]]
    purifiers = [p["name"] for p in declared["purifiers"]]
    assert {"fgsm", "pgd", "cw_l2", "apgd_ce", "fab", "square"} <= set(attacks)
    context, page, _ = open_page(browser, service)
    assert options(page, "#attack-method") == attacks
    assert options(page, "#attack-defense") == ["none", *purifiers]
    assert options(page, "#purify-method") == purifiers
    for a in declared["attacks"]:  # each attack's own parameters, as declared
        page.select_option("#attack-method", a["name"])
        fields = page.eval_on_selector_all("#attack-params [data-param]", "es => es.map(e => e.dataset.param)")
        assert fields == [p["name"] for p in a["parameters"]], a["name"]
    context.close()


def test_a_queued_attack_shows_its_progress_and_stops(browser: Any, service: str) -> None:
    """PGD above the synchronous step budget (DFG_PGD_SYNC_MAX_STEPS, 100 at 512 x 512; the demo image is 64 x 64)
    is a queued job: the page follows it and its Stop button ends it."""
    context, page, requested = open_page(browser, service)
    page.click("#demo-btn")
    page.locator("#verdicts .verdict").nth(1).wait_for()
    page.select_option("#attack-method", "pgd")
    page.fill("#attack-param-eps", "0.002")  # too small to flip the verdict early: the job runs all its steps
    page.fill("#attack-param-steps", "10000")
    page.click("#attack-btn")
    page.wait_for_selector("#attack-progress:not([hidden])")
    page.wait_for_selector("#attack-stop:enabled")
    assert page.is_disabled("#attack-btn")  # one attack at a time
    page.click("#attack-stop")
    page.wait_for_selector("#attack-progress .progress-text:has-text('no result')")
    ended = page.inner_text("#attack-progress")
    assert re.search(r"(stopped|canceled): no result", ended), ended
    assert page.is_hidden("#error") and page.is_hidden("#attack-result")
    assert page.is_enabled("#attack-btn") and page.is_disabled("#attack-stop")
    assert any(re.search(r"/jobs/[0-9a-f-]+$", u) for u in requested), requested
    context.close()


def test_a_new_image_drops_the_running_purification(browser: Any, service: str) -> None:
    context, page, _ = open_page(browser, service)
    page.click("#demo-btn")
    page.locator("#verdicts .verdict").nth(1).wait_for()
    page.select_option("#purify-method", "dip")
    page.fill("#purify-param-max_iterations", "20000")
    polled: list[str] = []
    page.on("request", lambda r: polled.append(f"{r.method} {r.url}"))
    with page.expect_request(lambda r: r.method == "GET" and re.search(r"/jobs/[0-9a-f-]+$", r.url)) as first_poll:
        page.click("#purify-btn")
    job = first_poll.value.url.rsplit("/", 1)[1]  # accepted: the page follows job <id>
    assert page.is_visible("#purify-progress") and page.is_enabled("#purify-stop")

    page.set_input_files("#file", {"name": "chelsea.png", "mimeType": "image/png", "buffer": png(data.chelsea())})
    page.locator("#verdicts .verdict").nth(1).wait_for()
    assert page.is_hidden("#purify-progress") and page.is_hidden("#purify-result")
    assert page.is_enabled("#purify-btn") and page.is_disabled("#purify-stop")
    # The old job was stopped and is no longer polled.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = httpx.get(f"{service}/jobs/{job}").json()["status"]
        if status in ("stopped", "canceled"):
            break
        time.sleep(0.5)
    assert status in ("stopped", "canceled"), status
    assert f"DELETE {service}/jobs/{job}" in polled
    seen = len([u for u in polled if u.endswith(f"/jobs/{job}")])
    page.wait_for_timeout(2000)  # four polling periods
    assert len([u for u in polled if u.endswith(f"/jobs/{job}")]) == seen
    context.close()


def test_face_boxes_are_drawn_over_a_photo(browser: Any, service: str) -> None:
    photo = png(data.astronaut())  # 512 x 512
    answers = {
        m: httpx.post(
            f"{service}/detect", files={"file": ("astronaut.png", photo)}, data={"model": m, "crop": "faces"}
        ).json()
        for m in ("demo-resnet18", "demo-vgg16")
    }
    faces = answers["demo-resnet18"]["results"][0]["faces"]
    assert len(faces) == 1 and faces[0]["box"][0] <= ASTRONAUT_FACE[0] < faces[0]["box"][2], faces
    context, page, _ = open_page(browser, service)
    page.check("#crop-faces")
    page.set_input_files("#file", {"name": "astronaut.png", "mimeType": "image/png", "buffer": photo})
    page.wait_for_selector("#faces .face-box")
    assert page.locator("#faces .face-box").count() == 1
    box = page.locator("#faces .face-box")
    assert box.get_attribute("data-box") == ",".join(map(str, faces[0]["box"]))
    # Where it is drawn: the box scaled to the image as shown (512 px shown at the page's width).
    img = page.locator("#original-img").bounding_box()
    drawn = box.bounding_box()
    scale = img["width"] / 512
    x0, y0, x1, y1 = faces[0]["box"]
    assert img["width"] < 512  # shown smaller than its pixels: the boxes must follow
    assert abs(drawn["x"] - (img["x"] + x0 * scale)) < 3 and abs(drawn["y"] - (img["y"] + y0 * scale)) < 3, drawn
    assert abs(drawn["width"] - (x1 - x0) * scale) < 5 and abs(drawn["height"] - (y1 - y0) * scale) < 5, drawn
    # Each detector's p_fake and label for that face, as /detect gave them.
    for m, answer in answers.items():
        face = answer["results"][0]["faces"][0]
        tag = box.locator(f"[data-model='{m}']")
        assert tag.get_attribute("data-label") == face["label"]
        assert f"{100 * face['p_fake']:.1f}%" in tag.inner_text()
    assert verdicts(page, "#verdicts") == {m: a["results"][0]["label"] for m, a in answers.items()}
    shoot(page, "page-faces.png", full_page=False)
    context.close()


def test_the_verdict_is_the_services_at_a_calibrated_threshold(
    browser: Any, calibrated_service: str, calibrated: tuple[Path, float]
) -> None:
    answer = httpx.post(f"{calibrated_service}/detect", files={"file": ("demo-fake.png", DEMO_IMAGE.read_bytes())})
    result = answer.json()["results"][0]
    assert answer.json()["threshold_source"] == "checkpoint" and 0.5 <= result["p_fake"] < calibrated[1]
    assert result["label"] == "real"  # /detect's verdict at the checkpoint's threshold; a 0.5 cut says fake
    context, page, _ = open_page(browser, calibrated_service)
    page.set_input_files("#file", str(DEMO_IMAGE))
    page.locator("#verdicts .verdict").wait_for()
    card = page.locator(f"#verdicts .verdict[data-model='{CALIBRATED}']")
    assert card.get_attribute("data-label") == "real", card.inner_text()
    assert card.get_attribute("data-demo") == "true"  # from provenance.dataset: trained on data/demo
    assert float(card.get_attribute("data-threshold")) == pytest.approx(calibrated[1])
    assert card.get_attribute("data-threshold-source") == "checkpoint"
    assert "calibrated threshold" in card.inner_text() and "REAL" in card.inner_text().upper()
    context.close()


def test_with_api_keys_on_the_page_asks_for_the_key_then_works(browser: Any, keyed_service: str) -> None:
    context, page, _ = open_page(browser, keyed_service, ready=False)
    page.wait_for_selector("#error:not([hidden])")
    assert "needs an API key" in page.inner_text("#error") and "API key" in page.inner_text("header")
    page.set_input_files("#file", str(DEMO_IMAGE))  # clears the message; without a key it comes back, no verdict
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#verdicts") == ""
    assert "needs an API key" in page.inner_text("#error") and page.is_disabled("#attack-btn")

    page.fill("#api-key", "not-the-key")
    page.click("#api-key-btn")
    page.wait_for_selector("#error:has-text('refused this API key')")

    authorized: list[str] = []
    host = urlsplit(keyed_service).netloc
    page.on(
        "request",
        lambda r: authorized.append(r.headers.get("authorization", "")) if urlsplit(r.url).netloc == host else None,
    )
    page.fill("#api-key", API_KEY)
    page.click("#api-key-btn")
    page.wait_for_selector("body[data-ready='true']")
    page.locator("#verdicts .verdict").nth(1).wait_for()  # the image loaded before is scored now
    assert verdicts(page, "#verdicts") == {"demo-resnet18": "fake", "demo-vgg16": "fake"}
    assert page.is_hidden("#error")
    page.select_option("#attack-defense", "jpeg")  # FGSM through JPEG: an adaptive attack, synchronous
    page.click("#attack-btn")
    page.wait_for_selector("#attack-result:not([hidden])")
    assert "through jpeg" in page.inner_text("#attack-summary")
    assert authorized and set(authorized) == {f"Bearer {API_KEY}"}, set(authorized)
    stored = page.evaluate("[sessionStorage.length, localStorage.length, Object.values(sessionStorage)]")
    assert stored == [1, 0, [API_KEY]], stored  # this tab only, never localStorage
    context.close()


@pytest.fixture(scope="module")
def audit_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API and one worker with a tiny detector (tests/conftest.py), API keys on: an audit the page can run. Its
    own Redis: the module's other services keep their workers, which know no tiny-vgg, on the shared one."""
    checkpoints = tmp_path_factory.mktemp("audit-page-ckpt")
    make_tiny_checkpoint(checkpoints, "tiny-vgg", arch="vgg16_slim", seed=0)
    procs = Processes(tmp_path_factory.mktemp("audit-page-service"))
    with redis_in_tmp(appendonly=False) as redis:
        try:
            env = service_env(redis.url, checkpoints, DFG_API_KEYS=hash_key(AUDIT_KEY), DFG_HEARTBEAT_S="1")
            base = procs.api(env)
            procs.worker(env)
            yield base
        except BaseException:
            print(procs.logs())
            raise
        finally:
            procs.stop()


def audit_zip(folders: tuple[str, ...] = ("fake", "real"), n: int = 4, size: int = 32) -> bytes:
    """``n`` PNGs per folder: flat-toned "fakes", noisy "reals" (as tests/workers/test_audit_jobs.py's data_zip)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for folder in folders:
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                if folder == "fake":
                    pixels = (pixels // 64 * 64).astype(np.uint8)
                z.writestr(f"{folder}/{i}.png", png(pixels))
    return buf.getvalue()


def open_keyed(browser: Any, base: str) -> tuple[Any, Any]:
    context, page, _ = open_page(browser, base, 1280, 900, ready=False)
    page.wait_for_selector("#error:has-text('needs an API key')")
    page.fill("#api-key", AUDIT_KEY)
    page.click("#api-key-btn")
    page.wait_for_selector("body[data-ready='true']")
    return context, page


def test_an_audit_runs_from_the_page_and_its_report_opens_with_api_keys_on(browser: Any, audit_service: str) -> None:
    context, page = open_keyed(browser, audit_service)
    assert options(page, "#audit-model") == ["tiny-vgg"]
    assert options(page, "#audit-profile") == ["quick", "standard"]
    assert page.is_disabled("#audit-btn")  # no zip yet
    page.set_input_files("#audit-file", {"name": "data.zip", "mimeType": "application/zip", "buffer": audit_zip()})
    page.fill("#audit-eps", "8/255")  # one budget: a small audit
    page.click("#audit-btn")
    page.wait_for_selector("#audit-threats li")
    threats = page.locator("#audit-threats li")
    names = [threats.nth(i).get_attribute("data-threat") for i in range(threats.count())]
    assert "clean" in names and len(names) > 2, names
    page.wait_for_selector("#audit-reports:not([hidden])", timeout=AUDIT_TIMEOUT_MS)
    assert page.is_hidden("#error"), page.inner_text("#error")
    assert page.get_attribute("#audit-progress", "data-status") == "finished"
    assert page.get_attribute("#audit-progress .bar", "aria-valuenow") == "100"
    for i in range(threats.count()):  # every threat's shards done
        assert threats.nth(i).get_attribute("data-done") == threats.nth(i).get_attribute("data-total")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#audit-section").screenshot(path=str(ARTIFACTS / "audit-panel.png"))
    # The report files came with the key (a plain link could not send it): blob: URLs of the fetched bytes.
    hrefs = [str(page.get_attribute(f"#audit-report-{k}", "href")) for k in ("html", "json", "csv")]
    assert all(h.startswith("blob:") for h in hrefs), hrefs
    saved = {}
    for key in ("json", "csv"):
        with page.expect_download() as download:
            page.click(f"#audit-report-{key}")
        saved[key] = Path(download.value.path()).read_text()
        assert download.value.suggested_filename == {"json": "report.json", "csv": "per_image.csv"}[key]
    assert json.loads(saved["json"])["name"] == "tiny-vgg", saved["json"][:300]
    assert len(saved["csv"].splitlines()) == 9, saved["csv"]  # a header and one row per image
    with context.expect_page() as opened:
        page.click("#audit-report-html")
    report = opened.value
    report.wait_for_selector(".summary")
    summary = report.inner_text(".summary")
    assert "tiny-vgg" in summary and "of clean fakes pass as real" in summary, summary
    shoot(report, "audit-report.png")
    context.close()


def test_a_zip_without_fake_or_real_shows_the_services_message(browser: Any, audit_service: str) -> None:
    context, page = open_keyed(browser, audit_service)
    page.set_input_files(
        "#audit-file", {"name": "pets.zip", "mimeType": "application/zip", "buffer": audit_zip(("cats", "dogs"), n=1)}
    )
    page.click("#audit-btn")
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "POST /audits failed (422)" in text and "cats" in text, text
    assert page.is_hidden("#audit-reports") and page.is_enabled("#audit-btn")
    context.close()


def test_the_audit_panels_more_threats_reach_the_service(browser: Any, audit_service: str) -> None:
    """L2 budgets, a defence and overrides from the panel's folded options are the audit's threats (its progress
    lists them); with one detector served, no transfer source is offered."""
    context, page = open_keyed(browser, audit_service)
    page.click("#audit-more summary")
    assert "no other detector is served" in page.inner_text("#audit-transfer")
    assert options(page, "#audit-defense")[:2] == ["none", "dip"]
    page.set_input_files("#audit-file", {"name": "data.zip", "mimeType": "application/zip", "buffer": audit_zip()})
    page.select_option("#audit-profile", "standard")  # minutes on the one worker: still running when stopped
    page.fill("#audit-l2", "2/255")
    page.select_option("#audit-defense", "jpeg")
    page.fill("#audit-set", "eot_pgd.steps=2  through_defense.steps=2")
    page.click("#audit-btn")
    page.wait_for_selector("#audit-threats li")
    threats = page.locator("#audit-threats li")
    names = {threats.nth(i).get_attribute("data-threat") for i in range(threats.count())}
    assert {"l2_suite(budget=standard, rms=2/255)", "through_defense(eps=4/255, steps=2)",
            "eot_pgd(eot=16, eps=4/255, steps=2)"} <= names, names  # fmt: skip
    assert not any(str(n).startswith("l2_suite(budget=standard, rms=1/255)") for n in names)  # the given curve only
    page.click("#audit-stop")
    page.wait_for_selector("#audit-progress[data-status='stopped']")
    assert page.is_hidden("#error"), page.inner_text("#error")
    context.close()


def test_a_running_audit_stops(browser: Any, audit_service: str) -> None:
    """The standard profile (its larger budgets, five eps) runs for minutes on the one worker: Stop DELETEs it."""
    context, page = open_keyed(browser, audit_service)
    page.set_input_files("#audit-file", {"name": "data.zip", "mimeType": "application/zip", "buffer": audit_zip()})
    page.select_option("#audit-profile", "standard")
    page.click("#audit-btn")
    page.wait_for_selector("#audit-stop:enabled")
    assert page.is_disabled("#audit-btn")  # one audit at a time
    page.click("#audit-stop")
    page.wait_for_selector("#audit-progress[data-status='stopped']")
    assert "no report" in page.inner_text("#audit-progress .progress-text")
    assert page.is_hidden("#error") and page.is_hidden("#audit-reports")
    assert page.is_enabled("#audit-btn") and page.is_disabled("#audit-stop")
    context.close()
