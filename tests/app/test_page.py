"""The page and the API docs are served from the package, reference nothing on another host, and ship in the
wheel. (tests/browser/ renders them in a real Chromium.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.routes.page import STATIC_DIR
from tests.app.test_api import make_client
from tests.conftest import ROOT

#: The packages pyproject.toml builds.
PACKAGES = ("app", "core", "workers", "models", "deepfake_guard")
#: src="..." and href="..." of a page.
_LINKS = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_load_only_the_services_own_assets(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    links = _LINKS.findall(resp.text)
    assert links, resp.text[:500]
    assert not [u for u in links if re.match(r"(https?:)?//", u)], links  # no CDN, no fonts, no favicon elsewhere
    for url in links:
        if url.startswith("/") and url != "/openapi.json" and not url.startswith(("/docs", "/redoc", "/metrics")):
            assert client.get(url).status_code == 200, url


def test_the_page_only_calls_existing_routes(client: TestClient) -> None:
    script = (STATIC_DIR / "app.js").read_text()
    called = set(re.findall(r"""api\(\s*[`"'](/[a-z]+)""", script))
    assert called == {"/models", "/methods", "/detect", "/attack", "/purify", "/jobs", "/audits", "/static"}, called
    paths = client.get("/openapi.json").json()["paths"]
    for prefix in called - {"/static"}:
        assert any(p == prefix or p.startswith(prefix + "/") for p in paths), prefix


def test_docs_routes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc", "/favicon.ico"} & set(paths)
    assert "/metrics" in paths


@pytest.mark.slow
def test_the_wheel_ships_every_static_file(tmp_path: Path) -> None:
    """A non-editable install serves the page and the docs: every tracked file under app/static is in the wheel."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    source = tmp_path / "src"  # a copy of the sources, so that the build leaves nothing in the checkout
    for name in tracked:
        if name in ("pyproject.toml", "README.md") or name.split("/")[0] in PACKAGES:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("deepfake_guard-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    static = [name for name in tracked if name.startswith("app/static/")]
    assert "app/static/vendor/swagger-ui/swagger-ui-bundle.js" in static
    assert set(static) <= shipped, sorted(set(static) - shipped)
