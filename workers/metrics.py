"""The worker's figures for the API's ``/metrics``, written to Redis (layout and reasons: core/jobmetrics.py).

Called from the RQ worker class (workers/worker.py), never from the job functions: a job records nothing itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from core import jobmetrics, keys

log = logging.getLogger("deepfake_guard.worker")


def job_labels(job: Job) -> tuple[str, str]:
    """(kind, method) of a job, from the meta the API wrote when it queued it (app/jobs.py)."""
    meta = job.meta or {}
    params = meta.get("params") or {}
    return jobmetrics.label(meta.get("kind", "unknown")), jobmetrics.label(params.get("method", "unknown"))


def dip_steps_per_second(result: Any) -> float | None:
    """A finished DIP job's rate (any iterative purifier's: models/purify/registry.py), from its result's
    ``iterations`` and ``seconds``; None for any other job."""
    from models import purify as purifiers

    method = result.get("method") if isinstance(result, dict) else None
    if method not in purifiers.PURIFIERS_REGISTRY or not purifiers.get(str(method)).iterative:
        return None
    iterations, seconds = result.get("iterations"), result.get("seconds")
    if not isinstance(iterations, int) or not isinstance(seconds, int | float) or seconds <= 0 or iterations <= 0:
        return None
    return iterations / seconds


def record(conn: Redis, job: Job, outcome: str, *, seconds: float | None = None) -> None:
    """Count one outcome of ``job``; a finished one (``seconds`` given) also adds its duration and, for DIP, its
    step rate from the result RQ has just stored.

    Best effort: a Redis blip loses these figures (logged), never the job's own result."""
    kind, method = job_labels(job)
    try:
        result = job.return_value() if outcome == "finished" else None
        with conn.pipeline(transaction=True) as pipe:
            pipe.hincrby(jobmetrics.JOBS_KEY, jobmetrics.outcome_field(kind, method, outcome), 1)
            if seconds is not None:
                bucket, total = jobmetrics.duration_fields(kind, method, seconds)
                pipe.hincrby(jobmetrics.JOBS_KEY, bucket, 1)
                pipe.hincrbyfloat(jobmetrics.JOBS_KEY, total, seconds)
            rate = dip_steps_per_second(result)
            if rate is not None:
                bucket, total = jobmetrics.dip_rate_fields(rate)
                pipe.hincrby(jobmetrics.JOBS_KEY, bucket, 1)
                pipe.hincrbyfloat(jobmetrics.JOBS_KEY, total, rate)
            pipe.execute()
    except RedisError as exc:
        log.warning("metrics for job %s (%s) not recorded: Redis unreachable (%s)", job.id, outcome, exc)


class Presence:
    """Keeps this worker in ``WORKERS_KEY`` while it runs, idle or busy, renewed every ``period_s`` seconds.

    RQ's own worker registration cannot serve: an idle worker blocks in its dequeue for minutes between two RQ
    heartbeats. A member whose expiry (3 periods ahead) passes is a dead worker; the API trims those."""

    def __init__(self, conn: Redis, name: str, period_s: float, queues: tuple[str, ...] = ()) -> None:
        self.conn, self.name, self.period_s, self.queues = conn, name, period_s, queues
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-presence", daemon=True)

    def _beat(self) -> None:
        ttl = 3 * self.period_s
        try:
            with self.conn.pipeline(transaction=True) as pipe:
                pipe.zadd(jobmetrics.WORKERS_KEY, {self.name: time.time() + ttl})
                # Which queues it takes, for /readyz (app/routes/health.py): expires with the presence itself.
                pipe.set(keys.worker_queues_key(self.name), ",".join(self.queues), px=int(ttl * 1000))
                pipe.execute()
        except RedisError as exc:  # a blip must not stop the worker; the next beat retries
            log.warning("worker presence not renewed: Redis unreachable (%s)", exc)

    def _run(self) -> None:
        while not self._done.wait(self.period_s):
            self._beat()

    def __enter__(self) -> Presence:
        self._beat()  # present before the first job (/readyz reads it), not whenever the renewal thread first runs
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        try:
            self.conn.zrem(jobmetrics.WORKERS_KEY, self.name)
            self.conn.delete(keys.worker_queues_key(self.name))
        except RedisError as exc:  # the entry then expires by itself
            log.warning("worker presence not removed: Redis unreachable (%s)", exc)
