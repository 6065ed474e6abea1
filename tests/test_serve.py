"""The README's run command: `deepfake-guard serve` brings up Redis, a worker and the API by itself."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests import imagefiles as files
from tests.conftest import ROOT, Processes, free_port, service_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_serve_embedded_default_detects_and_runs_jobs(processes: Processes) -> None:
    checkpoints = ROOT / "checkpoints"
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
