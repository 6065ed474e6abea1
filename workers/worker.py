"""The worker entry point and its RQ worker class.

``GuardWorker`` is a non-forking RQ worker: CUDA does not survive ``fork``, and the detectors are
loaded once per process. A heartbeat thread keeps the job's registry entry short-lived, so when the
process dies (SIGKILL, OOM, node loss) RQ's StartedJobRegistry cleanup retries the job within
about ``3 * heartbeat_s`` seconds instead of after the whole job timeout.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.worker import WorkerStatus

from core.settings import Settings, get_settings
from models.zoo import Zoo, resolve_device
from workers import context, metrics

log = logging.getLogger("deepfake_guard.worker")

#: Errors that a retry would only repeat: bad parameters or input, an input that has expired. Such a job fails
#: at once with its reason. Anything else (a CUDA out-of-memory RuntimeError, a Redis blip, a killed worker)
#: is retried up to DFG_JOB_RETRIES times.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError)


class GuardWorker(SimpleWorker):
    heartbeat_s: int = 5

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_s * 3 + 2

    def mark_stopped(self, job_id: str) -> None:
        """The job was stopped on request: RQ then records it STOPPED and does not retry it."""
        self._stopped_job_id = job_id

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # RQ calls this before it decides, from this same job object, whether to retry.
        if len(exc_info) > 1 and isinstance(exc_info[1], PERMANENT_ERRORS):
            job.retries_left = 0
        super().handle_exception(job, *exc_info)

    def _beat(self, job: Job, execution: Execution, done: threading.Event) -> None:
        while not done.wait(self.heartbeat_s):
            try:
                self.maintain_heartbeats(job, execution)
            except RedisError as exc:  # a blip must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed: %s", job.id, exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, done), name=f"heartbeat-{job.id}", daemon=True)
        if int(job.meta.get("attempts", 0)) > 0:  # an earlier attempt began: whoever ended it, this is a retry
            metrics.record(self.connection, job, "retried")
        beat.start()
        started = time.monotonic()
        try:
            succeeded = self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
        self._record_outcome(job, succeeded, time.monotonic() - started)
        self.set_state(WorkerStatus.IDLE)

    def _record_outcome(self, job: Job, succeeded: bool, seconds: float) -> None:
        """Figures for /metrics (workers/metrics.py), from the status RQ has just given the attempt."""
        if succeeded:
            metrics.record(self.connection, job, "finished", seconds=seconds)
            return
        status = job.get_status(refresh=False)
        if status in (JobStatus.FAILED, JobStatus.STOPPED):
            metrics.record(self.connection, job, str(status.value))
        # else RQ re-queued it: counted as "retried" when the next attempt begins

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # Present for /metrics' live-worker gauge from start to exit, idle or busy (workers/metrics.py).
        with metrics.Presence(self.connection, self.name, self.heartbeat_s):
            return bool(super().work(*args, **kwargs))


def build_worker(settings: Settings, conn: Redis, zoo: Zoo) -> GuardWorker:
    queue = Queue(settings.queue_name, connection=conn)
    worker = GuardWorker([queue], connection=conn, maintenance_interval=max(10, settings.heartbeat_s * 2))
    worker.heartbeat_s = settings.heartbeat_s
    context.init(context.WorkerContext(settings=settings, conn=conn, zoo=zoo, worker=worker))
    return worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deepfake-guard worker", description="Run an RQ worker for deepfake-guard jobs."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's own)")


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.redis_url is None:
        raise SystemExit("DFG_REDIS_URL is not set: a worker needs the Redis server the API uses")
    # Connecting is bounded by DFG_REDIS_TIMEOUT_S; the read timeout is left to RQ, which raises it above its
    # blocking dequeue (BLMOVE/BLPOP for worker_ttl - 15 s): a shorter one would break every idle wait.
    conn = Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout_s)
    zoo = Zoo.from_directory(settings.checkpoints_dir, resolve_device(settings.device))
    log.info("worker loaded detectors %s on %s", zoo.names(), zoo.device)
    worker = build_worker(settings, conn, zoo)
    if args.name:
        worker.name = args.name
    worker.work(burst=args.burst, logging_level=settings.log_level.upper(), with_scheduler=False)
    return 0
