"""/detect latency while synchronous attacks run in the same API process (app/compute.py), over real HTTP.

Starts the bundled Redis server (deepfake_guard/embedded.py; /attack wants one, for the attacks it queues) and the
API under uvicorn on a loopback port (CPU, the demo detectors, no worker: every attack here is synchronous),
then measures one client's sequential /detect requests twice:
  idle     nothing else running
  loaded   while --attackers clients each send synchronous /attack requests back to back
and prints p50/p99 of both and the ratio loaded p99 / idle p99 (target: <= 3, README "Safe to expose").

Usage: python bench/sync_attacks.py [--attackers 20] [--requests 200] [--method M --steps 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from benchio import save_report
from PIL import Image

from deepfake_guard.embedded import EmbeddedRedis
from models import attacks

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def start_api(port: int, threads: int, redis_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFG_")}
    env.update({"DFG_DEVICE": "cpu", "DFG_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT), "DFG_REDIS_URL": redis_url})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not start within 120 s")


def detect_latencies(base: str, image: bytes, n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=300) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            resp = client.post(f"{base}/detect", files={"file": ("x.png", image, "image/png")})
            resp.raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_s": statistics.median(values), "p99_s": percentile(values, 99), "mean_s": statistics.fmean(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attackers", type=int, default=20, help="concurrent synchronous attack clients")
    parser.add_argument("--requests", type=int, default=200, help="/detect requests per phase")
    names = attacks.names()
    iterative = [n for n in names if attacks.get(n).declares("steps")]  # PGD
    parser.add_argument("--method", default=iterative[0] if iterative else names[0], choices=names)
    parser.add_argument(
        "--steps", type=int, default=100, help="the attack's steps, or its max_iterations (with 1 search step)"
    )
    parser.add_argument("--size", type=int, default=64, help="side of the test images, pixels")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the API (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    scratch = tempfile.TemporaryDirectory(prefix="dfg-bench-", dir="/tmp")  # a short Unix socket path
    redis = EmbeddedRedis(scratch.name, appendonly=False).start()
    proc = start_api(port, args.threads, redis.url)
    stop = threading.Event()
    done: list[float] = []
    failures: list[str] = []
    report: dict[str, Any] = {
        "bench": "sync_attacks", "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    try:
        image = png(args.size, 0)
        detect_latencies(base, image, 10)  # warm-up
        idle = detect_latencies(base, image, args.requests)
        report["idle"] = summary(idle)
        save_report(args.json, report, complete=False)

        form = {"method": args.method, "save_format": "png"}
        spec = attacks.get(args.method)
        if spec.declares("steps"):
            form["steps"] = str(args.steps)
        elif spec.declares("max_iterations"):
            form.update({"search_steps": "1", "max_iterations": str(args.steps)})
        stop.clear()

        def attacker(seed: int) -> None:
            attack_image = png(args.size, seed)
            with httpx.Client(timeout=600) as client:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    resp = client.post(f"{base}/attack", files={"file": ("a.png", attack_image)}, data=form)
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code}: {resp.text[:200]}")
                        return
                    done.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=attacker, args=(i + 1,), daemon=True) for i in range(args.attackers)]
        for t in threads:
            t.start()
        time.sleep(2.0)  # every attacker has a request in flight
        t0 = time.perf_counter()
        loaded = detect_latencies(base, image, args.requests)
        wall = time.perf_counter() - t0
        stop.set()
        report["loaded"] = summary(loaded)
        report["attacks_finished_during_loaded"] = len(done)
        report["attacks_per_s"] = len(done) / wall if wall > 0 else None
        report["attack_failures"] = failures[:5]
        ratio = report["loaded"]["p99_s"] / report["idle"]["p99_s"]
        report["p99_ratio"] = ratio
        for phase in ("idle", "loaded"):
            p50, p99 = report[phase]["p50_s"] * 1e3, report[phase]["p99_s"] * 1e3
            print(f"/detect {phase:7s} p50 {p50:8.1f} ms  p99 {p99:8.1f} ms")
        print(f"({args.attackers} x {args.method}: {len(done)} attacks finished, {len(failures)} failed)")
        print(f"p99 ratio loaded / idle: {ratio:.2f} (target <= 3)")
        save_report(args.json, report, complete=True)
        for t in threads:
            t.join(timeout=600)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        redis.stop()
        scratch.cleanup()
    if failures:
        print(f"attacks failed: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
