"""Whatever dies when, every accepted job ends once: finished, failed with a reason, or stopped (docs/OPERATIONS.md,
"What the queue guarantees").

Real processes throughout: uvicorn, the bundled redis-server with AOF, and three workers (tests/workers/fault_worker.py:
the service's worker plus two hooks). Jobs of every kind go through the HTTP API; meanwhile workers are SIGKILLed at
random moments, some jobs kill the worker that pops them before they start (a deterministic stand-in for the
moment between pop and start), and Redis is SIGKILLed twice and restarted on its AOF file. Then every job is accounted
for, and no job may have run in two places at once.

The default size suits CI (a couple of minutes on 2 cores); ``FAULT_TEST_JOBS=300`` runs the larger version
(docs/OPERATIONS.md says when).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis

from deepfake_guard.embedded import EmbeddedRedis
from tests import imagefiles as files
from tests.conftest import Processes, service_env, wait_for
from tests.workers import fault_worker
from tests.workers.test_metrics_e2e import scrape

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOBS = int(os.environ.get("FAULT_TEST_JOBS", "21"))
WORKERS = 3
#: One pop in this many kills the worker that made it, before the job starts.
KILL_AT_POP_EVERY = 5
#: Random worker kills: one every this many seconds on average while jobs are submitted and for a while after.
KILL_EVERY_S = 6.0
#: Every kind of job, in both queues: cheap purifiers, DIP, attacks small enough for the fast lane and larger ones.
KINDS: list[tuple[str, dict[str, str]]] = [
    ("/purify", {"method": "jpeg", "quality": "60"}),
    ("/purify", {"method": "median"}),
    ("/purify", {"method": "bitdepth"}),
    ("/purify", {"method": "dip", "max_iterations": "40", "stop": "fixed"}),
    ("/attack", {"method": "pgd", "steps": "3", "target": "tiny-vgg"}),
    ("/attack", {"method": "pgd", "steps": "20", "target": "tiny-vgg", "source": "tiny-resnet"}),
    ("/attack", {"method": "cw_l2", "search_steps": "1", "max_iterations": "10", "target": "tiny-vgg"}),
]
ENDED = {"finished", "failed", "stopped"}


class Chaos:
    """Keeps ``WORKERS`` workers running, restarting any that die, and SIGKILLs one at random moments while on."""

    def __init__(self, processes: Processes, env: dict[str, str]) -> None:
        self.processes, self.env = processes, env
        self.workers = [self._start() for _ in range(WORKERS)]
        self.killing = threading.Event()
        self.done = threading.Event()
        self.kills = 0
        self.rng = random.Random(os.environ.get("FAULT_TEST_SEED"))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _start(self) -> subprocess.Popen[bytes]:
        return self.processes.start([sys.executable, "-m", "tests.workers.fault_worker"], self.env, "worker")

    def _run(self) -> None:
        next_kill = time.monotonic() + self.rng.expovariate(1 / KILL_EVERY_S)
        while not self.done.wait(0.3):
            if self.killing.is_set() and time.monotonic() >= next_kill:
                victim = self.rng.choice(self.workers)
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    self.kills += 1
                next_kill = time.monotonic() + self.rng.expovariate(1 / KILL_EVERY_S)
            for i, w in enumerate(self.workers):
                if w.poll() is not None:
                    self.workers[i] = self._start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def kill_redis(redis: EmbeddedRedis) -> None:
    """SIGKILL the server and start it again on its directory: it reloads its AOF file."""
    assert redis.process is not None
    redis.process.send_signal(signal.SIGKILL)
    redis.process.wait()
    redis.start(timeout_s=60)


def submit(base: str, path: str, data: dict[str, str], png: bytes) -> str:
    """POST until the API accepts the job (202); a 503 while Redis restarts is no acceptance."""
    deadline = time.monotonic() + 120
    while True:
        try:
            resp = httpx.post(f"{base}{path}", files={"file": ("g.png", png)}, data=data, timeout=30)
            if resp.status_code == 202:
                return str(resp.json()["id"])
            assert resp.status_code == 503, resp.text
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the API did not accept {path} {data}"
        time.sleep(0.5)


def status(base: str, job_id: str) -> dict[str, object]:
    try:
        resp = httpx.get(f"{base}/jobs/{job_id}", timeout=30)
    except httpx.TransportError:
        return {"status": "unknown"}
    return dict(resp.json()) if resp.status_code == 200 else {"status": f"http {resp.status_code}"}


def test_every_accepted_job_ends_once_whatever_dies(processes: Processes, tiny_checkpoints: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="dfg-fault-", dir="/tmp") as redis_dir:
        redis = EmbeddedRedis(redis_dir).start()  # with AOF, as in embedded mode
        try:
            run(processes, tiny_checkpoints, redis)
        finally:
            redis.stop()


def run(processes: Processes, tiny_checkpoints: Path, redis: EmbeddedRedis) -> None:
    env = service_env(
        redis.url, tiny_checkpoints, DFG_HEARTBEAT_S="1", DFG_JOB_RETRIES="10", DFG_RETRY_AFTER_S="1",
        DFG_PGD_SYNC_MAX_STEPS="1", DFG_CW_SYNC_MAX_STEPS="1", DFG_FAST_LANE_MAX_STEPS="10",
        FAULT_KILL_AT_POP_EVERY=str(KILL_AT_POP_EVERY),
    )  # fmt: skip
    conn = Redis(unix_socket_path=str(redis.socket), socket_timeout=10)
    base = processes.api(env)
    chaos = Chaos(processes, env)
    png = files.encode(files.gradient_rgb(48, 40), "PNG")
    accepted: list[str] = []
    try:
        chaos.killing.set()
        for i in range(JOBS):
            path, data = KINDS[i % len(KINDS)]
            job_id = submit(base, path, {**data, **({"seed": str(i)} if data["method"] == "dip" else {})}, png)
            accepted.append(job_id)
            if i == JOBS // 2:
                kill_redis(redis)  # the first time while jobs are submitted
        time.sleep(3)
        kill_redis(redis)  # the second time while they run
        wait_for(lambda: chaos.kills >= 2, 120, "two random worker kills")
        chaos.killing.clear()

        deadline = time.monotonic() + 600 + 4 * JOBS  # then the jobs not ended are named below
        while time.monotonic() < deadline and not all(status(base, j)["status"] in ENDED for j in accepted):
            time.sleep(2)
    finally:
        chaos.stop()
    final = {j: status(base, j) for j in accepted}
    lost = {j: s["status"] for j, s in final.items() if s["status"] not in ENDED}
    assert not lost, f"jobs not ended: {lost}"
    assert all(s["error"] for s in final.values() if s["status"] != "finished"), final
    overlaps = conn.lrange(fault_worker.OVERLAPS_KEY, 0, -1)
    assert not overlaps, f"jobs run twice at the same time: {overlaps}"
    pop_kills = int(conn.llen(fault_worker.POP_KILLS_KEY))
    assert pop_kills >= 2, "too few workers died between a pop and the job's start to test that moment"
    for name in ("deepfake-guard", "deepfake-guard-slow"):
        assert conn.llen(f"rq:queue:{name}") == 0 and conn.llen(f"rq:queue:{name}:intermediate") == 0
    finished = sum(1 for s in final.values() if s["status"] == "finished")
    counted = sum(
        v
        for (name, labels), v in scrape(base).items()
        if name == "dfg_jobs_total" and ("outcome", "finished") in labels
    )
    assert counted <= finished, f"/metrics counts {counted} finished jobs, {finished} finished"
    print(
        f"{len(accepted)} jobs: {finished} finished, {len(accepted) - finished} failed or stopped; "
        f"{chaos.kills} random worker kills, {pop_kills} kills between pop and start, 2 Redis kills"
    )
