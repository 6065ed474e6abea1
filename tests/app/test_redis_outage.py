"""Redis going away under a running API: every route that needs it answers 503 problem+json with
Retry-After (never a bare 500, never a hang), the routes that do not need it keep working, and the
same API recovers by itself once Redis is back."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis.exceptions import AuthenticationError, BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import redis_problem_detail
from app.main import create_app
from core.settings import Settings
from deepfake_guard.embedded import EmbeddedRedis
from tests import imagefiles as files
from tests.conftest import free_port, redis_in_tmp

PROBLEM = "application/problem+json"
RETRY_AFTER_S = 7


def make_client(checkpoints: Path, redis_url: str, **overrides: object) -> TestClient:
    settings = Settings(
        checkpoints_dir=checkpoints,
        redis_url=redis_url,
        default_model="tiny-vgg",
        device="cpu",
        retry_after_s=RETRY_AFTER_S,
        **overrides,  # type: ignore[arg-type]
    )
    # raise_server_exceptions: an unhandled exception (the old bare 500) fails the test with its traceback.
    return TestClient(create_app(settings), raise_server_exceptions=True)


def png() -> bytes:
    return files.encode(files.gradient_rgb(), "PNG")


def assert_redis_503(resp, needle: str = "Redis is not reachable") -> dict:  # type: ignore[no-untyped-def, type-arg]
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert resp.headers["retry-after"] == str(RETRY_AFTER_S)
    body = resp.json()
    assert body["status"] == 503 and body["title"] == "Service unavailable"
    assert body["detail"].startswith(needle), body
    return body  # type: ignore[no-any-return]


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis server of this test's own (the session one is shared), with AOF as `serve` runs it."""
    with redis_in_tmp(appendonly=True) as server:
        yield server


def test_killed_redis_gives_503_with_retry_after_then_the_api_recovers(
    tiny_checkpoints: Path, own_redis: EmbeddedRedis
) -> None:
    with make_client(tiny_checkpoints, own_redis.url) as c:
        queued = c.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
        assert c.get(f"/jobs/{job_id}").status_code == 200  # the pool now holds a connection that will go stale

        assert own_redis.process is not None
        own_redis.process.kill()  # SIGKILL, as the QA review did
        own_redis.process.wait()

        f = {"file": ("a.png", png())}
        assert_redis_503(c.post("/purify", files=f, data={"method": "median"}))
        assert_redis_503(c.post("/purify", files=f, data={"method": "jpeg"}, headers={"Idempotency-Key": "k1"}))
        assert_redis_503(c.post("/attack", files=f, data={"method": "cw_l2", "max_iterations": "1001"}))
        for job in (job_id, "x"):
            assert_redis_503(c.get(f"/jobs/{job}"))
            assert_redis_503(c.delete(f"/jobs/{job}"))
            assert_redis_503(c.get(f"/jobs/{job}/result"))
        assert_redis_503(c.get("/readyz"))  # the same 503 as every route, Retry-After included
        # What does not need Redis keeps working.
        assert c.get("/healthz").status_code == 200
        assert c.post("/detect", files=f).status_code == 200

        own_redis.start()  # same socket and directory: the AOF brings the job back
        info = c.get(f"/jobs/{job_id}")
        assert info.status_code == 200, info.text
        assert info.json()["status"] == "queued"
        ready = c.get("/readyz")  # Redis answers again; what is missing now is a worker (none runs in this test)
        assert ready.status_code == 503 and ready.json()["detail"].startswith("no live worker"), ready.text

        # Killed and back between two requests (the embedded supervisor restarts it within ~1 s): the pooled
        # connection is stale, and the next request must still succeed, not pay for it with a 503.
        own_redis.process.kill()
        own_redis.process.wait()
        own_redis.start()
        assert c.get(f"/jobs/{job_id}").status_code == 200
        assert c.delete(f"/jobs/{job_id}").json()["status"] == "canceled"


def test_refused_tcp_redis_is_503_and_the_password_stays_secret(tiny_checkpoints: Path) -> None:
    url = f"redis://admin:s3cr%40tPass@127.0.0.1:{free_port()}/0"  # nothing listens there
    with make_client(tiny_checkpoints, url) as c:
        for resp in (c.get("/jobs/abc"), c.post("/purify", files={"file": ("a.png", png())})):
            body = assert_redis_503(resp)
            assert "s3cr" not in resp.text and "tPass" not in resp.text, body


def test_black_holed_redis_costs_a_request_at_most_redis_timeout_s(tiny_checkpoints: Path) -> None:
    # A listening socket that never accepts: the TCP handshake completes (backlog) but nothing ever answers,
    # as with a hung server or a firewall that drops replies. Without a socket timeout this request hangs.
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        url = f"redis://127.0.0.1:{sink.getsockname()[1]}/0"
        with make_client(tiny_checkpoints, url, redis_timeout_s=1) as c:
            t0 = time.monotonic()
            resp = c.get("/jobs/abc")
            elapsed = time.monotonic() - t0
    body = assert_redis_503(resp)
    assert "timeout" in body["detail"].lower(), body
    assert 0.9 <= elapsed < 4.0, elapsed


@pytest.mark.parametrize(
    ("exc", "prefix"),
    [
        (
            RedisConnectionError("Error 111 connecting to redis://:hunter22@db:6379/0. Refused."),
            "Redis is not reachable",
        ),
        (RedisTimeoutError("Timeout reading from hunter22"), "Redis is not reachable"),
        (AuthenticationError("invalid password hunter22"), "Redis is not reachable"),
        (BusyLoadingError("Redis is loading the dataset in memory"), "Redis is not reachable"),
        (ResponseError("OOM command not allowed when used memory > 'maxmemory'"), "Redis failed"),
    ],
)
def test_redis_problem_detail_masks_credentials(exc: Exception, prefix: str) -> None:
    for url in ("redis://user:hunter22@db:6379/0", "redis://db:6379/0?password=hunter22", "rediss://:hunter%32%32@db"):
        detail = redis_problem_detail(exc, url)  # type: ignore[arg-type]
        assert detail.startswith(prefix + ": ") and "hunter22" not in detail, (url, detail)
    # A URL with credentials in redis-py's message is masked even when it is not the configured one.
    assert "hunter22" not in redis_problem_detail(RedisConnectionError("to redis://u:hunter22@h"), None)
    assert redis_problem_detail(RedisConnectionError(), None) == "Redis is not reachable: ConnectionError"
