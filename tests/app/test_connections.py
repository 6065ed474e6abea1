"""The HTTP server's edges (app/http_server.py, docs/OPERATIONS.md "Connections"): `deepfake-guard serve` on a
loopback port, spoken to over raw sockets as a slow, oversized or ambiguous client would."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepfake_guard.embedded import EmbeddedRedis
from tests.conftest import Processes, free_port, service_env, wait_http

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def server(
    redis_server: EmbeddedRedis, tiny_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    processes, port = Processes(tmp_path_factory.mktemp("serve")), free_port()
    env = service_env(redis_server.url, tiny_checkpoints, DFG_HTTP_HEADER_TIMEOUT_S="1", DFG_HTTP_BODY_TIMEOUT_S="1")
    proc = processes.start([sys.executable, "-m", "deepfake_guard.cli", "serve", "--port", str(port)], env, "serve")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, proc)
        yield "127.0.0.1", port
    finally:
        processes.stop()


def exchange(address: tuple[str, int], request: bytes, *, timeout_s: float = 30) -> bytes:
    """Send ``request`` and read until the server closes the connection (or ``timeout_s`` passes: a TimeoutError)."""
    with socket.create_connection(address, timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_head_over_the_limit_gets_431_not_a_reset(server: tuple[str, int]) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    answer = exchange(server, big)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x@127.0.0.1\r\n\r\n",
        b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["userinfo-host", "length-and-chunked"],
)
def test_ambiguous_heads_get_400(server: tuple[str, int], head: bytes) -> None:
    answer = exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]


def test_a_client_that_never_finishes_its_head_is_closed(server: tuple[str, int]) -> None:
    answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the head goes on
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    with httpx.Client(base_url=f"http://{server[0]}:{server[1]}", timeout=30) as client:  # kept alive meanwhile
        assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3


def test_a_client_that_never_finishes_its_body_is_closed(server: tuple[str, int]) -> None:
    head = (
        b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 5000\r\n\r\n--b\r\n"
    )
    exchange(server, head)  # returns once the server closes (a TimeoutError if it never does)
