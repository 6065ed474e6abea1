"""The README's run command: `deepfake-guard serve` brings up Redis, a worker and the API by itself."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.checkpoint import DEMO_CHECKPOINTS
from tests import imagefiles as files
from tests.conftest import Processes, free_port, service_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_serve_embedded_default_detects_and_runs_jobs(processes: Processes) -> None:
    checkpoints = DEMO_CHECKPOINTS
    assert sorted(p.stem for p in checkpoints.glob("*.safetensors")) == ["demo-resnet18", "demo-vgg16"]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dfg-serve-", dir="/tmp") as redis_dir:
        env = service_env(None, checkpoints, DFG_EMBEDDED_REDIS_DIR=redis_dir)
        proc = processes.start([sys.executable, "-m", "deepfake_guard.cli", "serve", "--port", str(port)], env, "serve")
        base = f"http://127.0.0.1:{port}"
        ready = wait_for(lambda: _ready(base, proc), 120, "/readyz to report a worker")
        assert ready["models"] == ["demo-resnet18", "demo-vgg16"]

        png = files.encode(files.gradient_rgb(80, 60), "PNG")
        det = httpx.post(f"{base}/detect", files={"file": ("g.png", png)}, timeout=30).json()
        assert det["model"]["name"] == "demo-resnet18" and len(det["model"]["sha256"]) == 64
        assert det["results"][0]["label"] in {"fake", "real"}

        job_id = httpx.post(
            f"{base}/purify", files={"file": ("g.png", png)}, data={"method": "median"}, timeout=30
        ).json()["id"]
        info = wait_for(lambda: _finished(base, job_id), 60, "the embedded worker to finish the job")
        assert set(info["result"]["detectors"]) == {"demo-resnet18", "demo-vgg16"}

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        # serve stopped its own Redis server and workers with it
        time.sleep(0.5)
        assert not (Path(redis_dir) / "redis.sock").exists() or not _redis_alive(Path(redis_dir) / "redis.sock")


def test_serve_restarts_a_killed_embedded_redis(processes: Processes, tiny_checkpoints: Path) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dfg-serve-", dir="/tmp") as redis_dir:
        sock = Path(redis_dir) / "redis.sock"
        env = service_env(None, tiny_checkpoints, DFG_EMBEDDED_REDIS_DIR=redis_dir, DFG_RETRY_AFTER_S="3")
        proc = processes.start([sys.executable, "-m", "deepfake_guard.cli", "serve", "--port", str(port)], env, "serve")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base, proc), 90, "/readyz to report a worker")
        png = files.encode(files.gradient_rgb(40, 30), "PNG")
        first = httpx.post(f"{base}/purify", files={"file": ("g.png", png)}, data={"method": "median"}, timeout=30)
        wait_for(lambda: _finished(base, first.json()["id"]), 60, "the first job")

        old_pid = _redis_pid(sock)
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        # Until it is back, routes that need Redis answer 503 problem+json with Retry-After, never a bare 500.
        resp = httpx.get(f"{base}/jobs/{first.json()['id']}", timeout=10)
        if resp.status_code != 200:
            assert resp.status_code == 503 and resp.headers["content-type"].startswith("application/problem+json")
            assert resp.headers["retry-after"] == "3" and "Redis" in resp.json()["detail"]

        new_pid = wait_for(lambda: (pid := _redis_pid(sock)) != old_pid and pid, 20, "serve to restart Redis")
        assert new_pid != old_pid
        wait_for(lambda: _ready(base, proc), 30, "/readyz after the restart")
        # The AOF kept the finished job, and the worker reconnected by itself and takes new jobs.
        assert _finished(base, first.json()["id"]) is not None
        second = httpx.post(f"{base}/purify", files={"file": ("g.png", png)}, data={"method": "jpeg"}, timeout=30)
        assert second.status_code == 202, second.text
        wait_for(lambda: _finished(base, second.json()["id"]), 60, "a job after the restart")
        assert "embedded redis-server exited with -9; restarting it" in processes.logs()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        time.sleep(0.5)
        assert _redis_pid(sock) is None  # serve stopped the restarted server too


def test_a_killed_serve_leaves_no_child_and_a_second_serve_on_its_directory_refuses(
    processes: Processes, tiny_checkpoints: Path
) -> None:
    import psutil

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dfg-serve-", dir="/tmp") as redis_dir:
        env = service_env(None, tiny_checkpoints, DFG_EMBEDDED_REDIS_DIR=redis_dir, DFG_EMBEDDED_WORKERS="2")
        serve_cmd = [sys.executable, "-m", "deepfake_guard.cli", "serve", "--port"]
        proc = processes.start([*serve_cmd, str(port)], env, "serve")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base, proc), 120, "/readyz to report a worker")
        png = files.encode(files.gradient_rgb(40, 30), "PNG")
        job_id = httpx.post(f"{base}/purify", files={"file": ("g.png", png)}, data={"method": "median"}, timeout=30)
        wait_for(lambda: _finished(base, job_id.json()["id"]), 60, "the job")

        # A second serve on the same directory would start a second redis-server on the same AOF file: it refuses.
        second = processes.start([*serve_cmd, str(free_port())], env, "second-serve")
        assert second.wait(60) != 0
        said = (Path(processes.tmp) / f"second-serve-{len(processes.procs) - 1}.log").read_text()
        assert f"the Redis directory {Path(redis_dir).resolve()} is in use by another deepfake-guard serve" in said
        assert "Traceback" not in said and _ready(base, proc) is not None  # the first one is untouched

        # A worker restarted by the supervisor's thread is a child like the first ones.
        parent = psutil.Process(proc.pid)
        first_workers = _workers(parent)
        first_workers[0].kill()
        wait_for(
            lambda: len(now := _workers(parent)) == 2 and first_workers[0].pid not in [c.pid for c in now],
            30, "the supervisor to restart the worker",
        )  # fmt: skip
        children = parent.children(recursive=True)
        assert len(children) >= 3, children  # redis-server and two workers

        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not [c for c in children if _alive(c)], 20, "serve's children to die")

        # The directory is free again: a new serve starts on it and still has the job the first one finished.
        port = free_port()
        again = processes.start([*serve_cmd, str(port)], env, "serve-again")
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(base, again), 120, "the new serve to be ready")
        assert _finished(base, job_id.json()["id"]) is not None


def _workers(parent: Any) -> list[Any]:
    """``parent``'s live worker processes (a killed one is a zombie until the supervisor reaps it)."""
    return [c for c in parent.children() if _alive(c) and "workers" in c.cmdline()]


def _alive(p: Any) -> bool:
    import psutil

    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_supervisor_restarts_redis_with_its_data_and_stops_it() -> None:
    from redis import Redis

    from deepfake_guard.embedded import EmbeddedRedis, WorkerSupervisor

    with tempfile.TemporaryDirectory(prefix="dfg-sup-", dir="/tmp") as redis_dir:
        redis = EmbeddedRedis(redis_dir).start()
        supervisor = WorkerSupervisor(0, {}, redis=redis).start()
        try:
            conn = Redis(unix_socket_path=str(redis.socket), socket_timeout=2)
            conn.set("kept", "yes")  # acknowledged, hence in the AOF file, before the kill
            assert redis.process is not None
            redis.process.kill()
            wait_for(lambda: supervisor.redis_restarts == 1, 15, "the supervisor to restart Redis")
            assert conn.get("kept") == b"yes"
            assert redis.alive() and _redis_pid(redis.socket) == redis.process.pid
        finally:
            supervisor.stop()
            redis.stop()
        assert _redis_pid(redis.socket) is None and supervisor.redis_restarts == 1


def _redis_pid(sock: Path) -> int | None:
    from redis import Redis
    from redis.exceptions import RedisError

    conn = Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1)
    try:
        return int(conn.info("server")["process_id"])
    except (RedisError, OSError):
        return None
    finally:
        conn.close()


def _ready(base: str, proc) -> dict | None:  # type: ignore[no-untyped-def, type-arg]
    if proc.poll() is not None:
        raise RuntimeError(f"serve exited with {proc.returncode}")
    try:
        resp = httpx.get(f"{base}/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    body = resp.json()
    return body if resp.status_code == 200 and body["workers"] >= 1 else None


def _finished(base: str, job_id: str) -> dict | None:  # type: ignore[type-arg]
    info = httpx.get(f"{base}/jobs/{job_id}", timeout=10).json()
    if info["status"] == "failed":
        raise AssertionError(info)
    return info if info["status"] == "finished" else None


def _redis_alive(sock: Path) -> bool:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    try:
        return bool(Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (RedisConnectionError, OSError):
        return False
