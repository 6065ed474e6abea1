"""Fair scheduling with real worker processes (docs/OPERATIONS.md, "Queues"): cheap jobs never wait behind DIP, a
retried job keeps its place at the front, a claimed batch follower never blocks a worker; and /readyz counts
live workers only."""

from __future__ import annotations

import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from core.jobmetrics import WORKERS_KEY
from tests import imagefiles as files
from tests.conftest import Processes, service_env, wait_for
from tests.workers.test_e2e_jobs import job, poll_until, submit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def cancel(base: str, *job_ids: str) -> None:
    for j in job_ids:
        httpx.delete(f"{base}/jobs/{j}", timeout=30)


def moment(info: dict[str, Any], event: str) -> datetime:
    """When RQ recorded a job's ``event`` (``started_at``, ``ended_at``): the far future if it has not happened."""
    value = info[event]
    return datetime.max.replace(tzinfo=UTC) if value is None else datetime.fromisoformat(value)


def test_a_jpeg_job_queued_behind_four_dip_jobs_finishes_while_the_first_one_runs(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    processes.worker(env)  # one worker
    dips = [submit(base, method="dip", max_iterations="20000", stop="fixed", seed=str(i)) for i in range(4)]
    wait_for(lambda: job(base, dips[0])["status"] == "started", 120, "the first DIP job to start")
    cheap = submit(base, method="jpeg", quality="50")
    # Whichever ends first, the JPEG job or the DIP job running when it was queued: the order of events, whatever
    # the machine's speed. Behind the DIP jobs, the JPEG job would still be queued when the first DIP job ends.
    wait_for(
        lambda: job(base, cheap)["status"] in ("finished", "failed") or job(base, dips[0])["status"] != "started",
        600, "the JPEG job or the first DIP job to end",
    )  # fmt: skip
    info = job(base, cheap)
    assert info["status"] == "finished", f"the first DIP job ended before the JPEG job: {info}"
    # RQ's own timestamps: the JPEG job ran inside the first DIP job's run, and ended before another DIP job started.
    first, others = job(base, dips[0]), [job(base, j) for j in dips[1:]]
    assert moment(first, "started_at") <= moment(info, "started_at"), (first, info)
    assert moment(info, "ended_at") < moment(first, "ended_at"), (first, info)
    assert all(moment(info, "ended_at") < moment(o, "started_at") for o in others), others
    cancel(base, *dips)


def submit_attack(base: str, **data: str) -> str:
    png = files.encode(files.gradient_rgb(64, 64), "PNG")
    resp = httpx.post(f"{base}/attack", files={"file": ("a.png", png, "image/png")}, data=data, timeout=60)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def test_a_jpeg_job_finishes_while_attacks_through_dip_run_with_one_worker(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    # Ten PGD steps through DIP (20,000 DIP steps each): the attacks' plan (core/job_plan.py) puts them in the slow
    # lane, so the worker's fast-lane thread stays free for the cheap job. Counted as 10 steps, both went to the
    # fast queue before and took both of the worker's loops: the JPEG job waited for one of them to end.
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    processes.worker(env)  # one worker
    adaptive = {"method": "pgd", "steps": "10", "defense": "dip", "bpda_iterations": "20000"}
    slow = [submit_attack(base, **adaptive, defense_seed=str(i)) for i in range(2)]
    wait_for(lambda: any(job(base, j)["status"] == "started" for j in slow), 120, "an attack to start")
    cheap = submit(base, method="jpeg", quality="50")
    info, _ = poll_until(base, cheap, {"finished", "failed"}, 120)
    assert info["status"] == "finished", info
    assert all(job(base, j)["status"] in ("started", "queued") for j in slow), [job(base, j) for j in slow]
    cancel(base, *slow)


def test_a_retried_job_goes_back_to_the_front_of_its_queue(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1")
    base = processes.api(env)
    worker = processes.worker(env)
    first = submit(base, method="dip", max_iterations="400", stop="fixed", seed="1")
    wait_for(lambda: (job(base, first)["progress"] or {}).get("iteration", 0) > 0, 120, "the job to make progress")
    newer = [submit(base, method="dip", max_iterations="400", stop="fixed", seed=str(s)) for s in (2, 3, 4)]
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    # the API's sweep (on polling) notices the dead worker and re-queues the job
    wait_for(lambda: job(base, first)["status"] == "queued", 30, "the abandoned job to be re-queued")
    processes.worker(env)
    info, _ = poll_until(base, first, {"started", "finished", "failed"}, 120)
    assert info["attempts"] >= 1 and info["status"] in ("started", "finished"), info
    assert all(job(base, j)["status"] == "queued" for j in newer), [job(base, j)["status"] for j in newer]
    cancel(base, first, *newer)


def test_a_worker_that_takes_a_claimed_follower_goes_on_with_other_jobs(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    leader, follower = (submit(base, method="dip", max_iterations="20000", stop="fixed") for _ in range(2))
    other = submit(base, method="dip", max_iterations="50", stop="fixed", seed="9")  # another network: no batch
    processes.worker(env)  # takes the leader, which claims the follower
    wait_for(lambda: (job(base, follower)["progress"] or {}).get("iteration", 0) > 0, 120, "the batch to run")
    processes.worker(env)  # finds the follower first in the queue; waiting for its leader would block it
    info, _ = poll_until(base, other, {"finished", "failed"}, 120)
    assert info["status"] == "finished", info
    assert job(base, leader)["status"] == "started" and job(base, follower)["status"] == "queued"
    cancel(base, follower, leader)


def test_readyz_turns_503_within_three_heartbeats_after_every_worker_is_killed(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1")
    base = processes.api(env)
    workers = [processes.worker(env) for _ in range(2)]
    ready = wait_for(
        lambda: (r := httpx.get(f"{base}/readyz", timeout=10)).status_code == 200 and r.json()["workers"] == 2 and r,
        120, "both workers to be ready",
    )  # fmt: skip
    assert ready.json()["status"] == "ready"
    conn = Redis.from_url(redis_url)
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait(10)
    wait_for(lambda: httpx.get(f"{base}/readyz", timeout=10).json().get("workers") == 1, 60, "one live worker")
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait(10)
    killed_at = time.time()
    # What bounds the delay, read from Redis rather than timed: the dead workers' presence was last renewed before
    # the kill, for three heartbeats at most, so it lapses within three heartbeats of it however loaded the machine.
    expiries = [float(score) for _, score in conn.zrange(WORKERS_KEY, 0, -1, withscores=True)]
    assert all(e <= killed_at + 3 * 1 + 0.5 for e in expiries), (expiries, killed_at)  # none, if already lapsed
    resp = wait_for(
        lambda: (r := httpx.get(f"{base}/readyz", timeout=10)).status_code == 503 and r, 60, "/readyz to say 503",
        interval_s=0.1,
    )  # fmt: skip
    assert "no live worker: none has renewed its presence in the last 3 s" in resp.json()["detail"]


def test_readyz_is_503_when_a_queue_with_work_has_no_worker(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    # a worker that takes the fast queue only (its main loop on it, and no fast-lane thread)
    processes.start([sys.executable, "-m", "workers", "--queues", "fast"], env, "worker")
    wait_for(lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200, 120, "the worker to be ready")
    dip = submit(base, method="dip", max_iterations="50", stop="fixed")
    resp = httpx.get(f"{base}/readyz", timeout=10)
    assert resp.status_code == 503 and "deepfake-guard-slow" in resp.json()["detail"], resp.text
    cancel(base, dip)
