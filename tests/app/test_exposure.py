"""Safe to expose (README): API keys, job ownership, per-key limits, origins and hosts, strict form values, DIP's
working size, documented 400s. The API in-process (TestClient runs the real lifespan) against the real Redis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from tests import imagefiles as files
from tests.app.test_api import assert_problem, make_client, png

KEY_A, KEY_B = "key-a-0123456789", "key-b-9876543210"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url, max_pixels=1_000_000) as c:
        yield c


@pytest.fixture
def keyed(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    keys = f"{digest(KEY_A)},{digest(KEY_B)}"
    with make_client(tiny_checkpoints, redis_url, api_keys=keys, max_pixels=1_000_000) as c:
        yield c


def queue_jpeg(c: TestClient, headers: dict[str, str], **extra: str) -> str:
    resp = c.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}, headers=headers | extra)
    assert resp.status_code in (200, 202), resp.text
    return str(resp.json()["id"])


def test_without_a_valid_key_every_api_route_is_401(keyed: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY_A}"}):
        resp = keyed.post("/detect", files={"file": ("a.png", png())}, headers=headers)
        assert_problem(resp, 401, "API key")
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert_problem(keyed.get("/jobs/abc", headers=headers), 401, "API key")
        assert_problem(keyed.get("/models", headers=headers), 401, "API key")
    assert keyed.post("/detect", files={"file": ("a.png", png())}, headers=A).status_code == 200
    # probes, the scrape, the page and the docs stay open
    for path in ("/healthz", "/metrics", "/", "/docs", "/openapi.json", "/static/app.js"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/readyz").status_code == 503  # no worker here, but not a 401


def test_with_keys_on_the_openapi_document_declares_the_bearer_scheme(keyed: TestClient, client: TestClient) -> None:
    doc = keyed.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes == {"apiKey": {"type": "http", "scheme": "bearer", "description": schemes["apiKey"]["description"]}}
    for path, item in doc["paths"].items():
        for verb, operation in item.items():
            wanted = [] if path in ("/healthz", "/readyz", "/metrics") else [{"apiKey": []}]
            assert operation.get("security", []) == wanted, (verb, path)
    assert "securitySchemes" not in client.get("/openapi.json").json()["components"]  # keys off: nothing to send


def test_a_job_of_key_a_is_404_for_key_b_for_get_result_and_delete(keyed: TestClient) -> None:
    job_id = queue_jpeg(keyed, A)
    assert keyed.get(f"/jobs/{job_id}", headers=A).status_code == 200
    absent = keyed.get("/jobs/0123456789abcdef0123456789abcdef", headers=B).json()["detail"]
    for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/result"), ("DELETE", f"/jobs/{job_id}")):
        resp = keyed.request(method, path, headers=B)
        assert_problem(resp, 404, job_id)
        assert resp.json()["detail"] == absent.replace("0123456789abcdef0123456789abcdef", job_id)
    assert keyed.get(f"/jobs/{job_id}", headers=A).json()["status"] == "queued"  # B's DELETE changed nothing


def test_idempotency_keys_belong_to_the_api_key(keyed: TestClient) -> None:
    first = queue_jpeg(keyed, A, **{"Idempotency-Key": "k1"})
    # B's request with the same Idempotency-Key but other parameters is neither a conflict nor A's job
    resp = keyed.post(
        "/purify", files={"file": ("a.png", png())}, data={"method": "median"}, headers=B | {"Idempotency-Key": "k1"}
    )
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] != first
    assert queue_jpeg(keyed, A, **{"Idempotency-Key": "k1"}) == first


def test_a_burst_beyond_the_rate_gets_429_with_retry_after(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(
        tiny_checkpoints, redis_url, api_keys=digest(KEY_A) + "," + digest(KEY_B), rate_limit_burst=3,
        rate_limit_per_min=6,
    ) as c:  # fmt: skip
        answers = [c.get("/jobs/nope", headers=A).status_code for _ in range(5)]
        assert answers == [404, 404, 404, 429, 429], answers
        resp = c.get("/jobs/nope", headers=A)
        assert_problem(resp, 429, "a minute")
        assert 1 <= int(resp.headers["retry-after"]) <= 10  # one token per 10 s
        assert c.get("/jobs/nope", headers=B).status_code == 404  # another key has its own bucket


def test_queued_jobs_per_key_are_capped(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url, api_keys=f"{digest(KEY_A)},{digest(KEY_B)}", max_jobs_per_key=2) as c:
        ids = [queue_jpeg(c, A) for _ in range(2)]
        resp = c.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}, headers=A)
        assert_problem(resp, 429, "2 jobs queued or running")
        assert resp.headers["retry-after"]
        queue_jpeg(c, B)  # B is not held up by A's jobs
        assert c.delete(f"/jobs/{ids[0]}", headers=A).json()["status"] == "canceled"
        queue_jpeg(c, A)  # an ended job no longer counts


def test_keys_come_from_a_file_and_a_bad_file_stops_the_start(tmp_path: Path) -> None:
    from app.auth import load_key_digests

    good = tmp_path / "keys"
    good.write_text(f"# ops team\n{digest(KEY_A)}  # rotated 2025-01\n\n{digest(KEY_B).upper()}\n")
    settings = Settings(api_keys_file=good, device="cpu")  # type: ignore[call-arg]
    assert load_key_digests(settings) == {digest(KEY_A), digest(KEY_B)}
    bad = tmp_path / "bad"
    bad.write_text(f"{digest(KEY_A)}\n{KEY_B}\n")
    with pytest.raises(ValueError, match="line 2: not a sha256 hex digest") as err:
        load_key_digests(Settings(api_keys_file=bad, device="cpu"))  # type: ignore[call-arg]
    assert KEY_B not in str(err.value)  # a key pasted by mistake is not echoed
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key digest"):
        load_key_digests(Settings(api_keys_file=tmp_path / "empty", device="cpu"))  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="sha256 hex digests"):
        Settings(api_keys="not-a-digest", device="cpu")  # type: ignore[call-arg]


def test_hash_key_prints_the_digest_the_service_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    from deepfake_guard.cli import main

    assert main(["hash-key", "--key", KEY_A]) == 0
    assert capsys.readouterr().out.strip() == digest(KEY_A)
    assert main(["hash-key", "--new"]) == 0
    key, printed = capsys.readouterr().out.split()
    assert len(key) >= 40 and printed == digest(key)


def test_cross_origin_posts_are_refused_unless_the_origin_is_allowed(tiny_checkpoints: Path, redis_url: str) -> None:
    f = {"file": ("a.png", png())}
    with make_client(tiny_checkpoints, redis_url) as c:
        assert_problem(c.post("/detect", files=f, headers={"Origin": "https://evil.example"}), 403, "evil.example")
        assert c.post("/detect", files=f, headers={"Origin": "http://testserver"}).status_code == 200  # same origin
        assert c.post("/detect", files=f).status_code == 200  # not a browser
        preflight = c.options(
            "/detect", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers
    with make_client(tiny_checkpoints, redis_url, cors_origins="https://app.example") as c:
        resp = c.post("/detect", files=f, headers={"Origin": "https://app.example"})
        assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == "https://app.example"
        assert c.post("/detect", files=f, headers={"Origin": "https://evil.example"}).status_code == 403


def test_a_host_not_trusted_is_400(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url, trusted_hosts="api.example,*.internal") as c:
        assert_problem(c.get("/healthz"), 400, "'testserver' is not in DFG_TRUSTED_HOSTS")
        assert c.get("/healthz", headers={"Host": "api.example:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "dfg.internal"}).status_code == 200


@pytest.mark.parametrize(
    ("path", "data", "field"),
    [
        ("/purify", {"method": "jpeg", "quality": "5_0"}, "quality"),  # pydantic's lax mode read 50
        ("/purify", {"method": "jpeg", "quality": " 50"}, "quality"),
        ("/detect", {"threshold": "0_0"}, "threshold"),  # read as 0.0
        ("/attack", {"method": "fgsm", "targeted": "yes"}, "targeted"),
        ("/attack", {"method": "fgsm", "targeted": "1"}, "targeted"),
        ("/attack", {"method": "pgd", "steps": "1_0"}, "steps"),
        ("/attack", {"method": "fgsm", "eps": "1e-320"}, "eps"),  # changes no 8-bit pixel
        ("/attack", {"method": "fgsm", "eps": "0.0019"}, "eps"),  # under half an 8-bit level
    ],
)
def test_form_numbers_and_booleans_are_strict(client: TestClient, path: str, data: dict[str, str], field: str) -> None:
    resp = client.post(path, files={"file": ("a.png", png())}, data=data)
    assert_problem(resp, 422, f"{field}:")


def test_strict_values_that_are_plain_still_pass(client: TestClient) -> None:
    f = {"file": ("a.png", png())}
    assert client.post("/detect", files=f, data={"threshold": "5e-1"}).status_code == 200
    assert (
        client.post("/attack", files=f, data={"method": "fgsm", "eps": "0.002", "targeted": "false"}).status_code == 200
    )
    assert client.post("/purify", files=f, data={"method": "jpeg", "quality": "+50"}).status_code == 202


def test_dip_refuses_an_image_whose_working_size_is_too_thin(client: TestClient) -> None:
    thin = files.encode(files.gradient_rgb(10000, 16), "PNG")
    resp = client.post("/purify", files={"file": ("thin.png", thin)}, data={"method": "dip", "max_iterations": "10"})
    assert_problem(resp, 422, "10000 x 16 pixels and DIP would work on it at 512 x 1")
    assert "DFG_DIP_MIN_SIDE" in resp.json()["detail"]
    # the cheap purifiers work at the image's own size
    ok = client.post("/purify", files={"file": ("thin.png", thin)}, data={"method": "jpeg"})
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize("path", ["/detect", "/attack", "/purify"])
def test_a_malformed_multipart_body_gets_a_documented_problem(client: TestClient, path: str) -> None:
    resp = client.post(
        path, content=b"--xyz\r\nContent-Disposition: form-data\r\n\r\n\xff", headers={
            "Content-Type": "multipart/form-data; boundary=xyz"},
    )  # fmt: skip
    assert_problem(resp, 400, "Content-Disposition")
    documented = client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    assert {"400", "401", "403", "413", "429"} <= set(documented), sorted(documented)
