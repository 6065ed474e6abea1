"""A 500 MB upload is refused before it fills the disk: uvicorn on a loopback port, a raw socket client that
generates the body as it sends it, and the API process's temporary folder watched while it does."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Processes, service_env

pytestmark = [pytest.mark.e2e]

TOTAL = 500 << 20
CHUNK = 64 << 10


def folder_bytes(path: Path) -> int:
    total = 0
    for entry in os.scandir(path):
        with contextlib.suppress(FileNotFoundError):  # a spooled upload removed between listing and stat
            total += entry.stat().st_size
    return total


class DiskWatch:
    """The largest size a folder reached, sampled every 10 ms."""

    def __init__(self, path: Path) -> None:
        self.path, self.peak = path, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, folder_bytes(self.path))
            time.sleep(0.01)

    def __enter__(self) -> DiskWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, folder_bytes(self.path))


def upload(base: str, *, chunked: bool) -> tuple[int, bytes, int]:
    """POST /detect with a 500 MB multipart file made on the fly. Returns (status, response, bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {len(head) + TOTAL + 6}\r\n".encode()
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n" + framing
            + b"\r\n"
        )  # fmt: skip
        block = b"\x89PNG" + bytes(CHUNK - 4)
        try:
            piece = head + block
            while sent < TOTAL:
                s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                sent += len(piece)
                piece = block
                s.setblocking(False)
                try:
                    if s.recv(1, socket.MSG_PEEK):
                        break  # the server has answered: stop sending
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after its answer
        s.settimeout(30)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1") else 0
    return status, reply, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_500_mb_upload_is_refused_having_written_at_most_a_few_mb(
    processes: Processes, tiny_checkpoints: Path, tmp_path: Path, chunked: bool
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    # The multipart parser spools files over 1 MB to TMPDIR; 4 MB of upload allowed, as an operator might set.
    env = service_env(None, tiny_checkpoints, TMPDIR=str(spool), DFG_MAX_UPLOAD_BYTES=str(4 << 20))
    base = processes.api(env)
    with DiskWatch(spool) as disk:
        status, reply, sent = upload(base, chunked=chunked)
    assert status == 413, reply[:500]
    assert b"application/problem+json" in reply and b"DFG_MAX_UPLOAD_BYTES" in reply
    assert disk.peak <= 5 << 20, f"{disk.peak} bytes were written to {spool}"
    assert sent < 100 << 20, f"the client could send {sent} bytes before the answer"
    if not chunked:
        assert disk.peak == 0  # refused from its Content-Length, before a byte of the body was read
