"""The worker entry point and its RQ worker class.

``GuardWorker`` is a non-forking RQ worker: CUDA does not survive ``fork``, and the detectors are
loaded once per process. A heartbeat thread keeps the job's registry entry short-lived, so when the
process dies (SIGKILL, OOM, node loss) RQ's StartedJobRegistry cleanup retries the job within
about ``3 * heartbeat_s`` seconds instead of after the whole job timeout.

Every pop, from one queue or several, goes through ``GuardQueue.dequeue_any``: the job id moves to the queue's
intermediate list under a lease (workers/leases.py), so a worker killed between the pop and the start loses nothing,
and a job whose lease another worker holds is never started twice (docs/OPERATIONS.md, "What the queue guarantees").

Queues by cost (docs/OPERATIONS.md, "Queues"): the worker takes the fast queue first, then the slow one (RQ
dequeues in the order given), and a thread of the same process (``FastLaneWorker``) takes fast-queue jobs only,
so a JPEG purification or a small attack never waits for a DIP run, even with one worker.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.exceptions import BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from core import audits
from core.settings import Settings, get_settings
from models.zoo import Zoo, resolve_device
from workers import context, dip_batches, leases, metrics

log = logging.getLogger("deepfake_guard.worker")

#: Errors that a retry would only repeat: bad parameters or input, an input that has expired. Such a job fails
#: at once with its reason. Anything else (a CUDA out-of-memory RuntimeError, a Redis blip, a killed worker)
#: is retried up to DFG_JOB_RETRIES times.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError)
#: How long a worker pauses after putting back a job that a live batch leader holds (``GuardWorker.execute_job``):
#: when only such jobs are queued it would otherwise take and return them in a busy loop.
DEFER_PAUSE_S = 0.2
#: Longest pause between two tries to reach a Redis that is loading its data or restarting (``wait_for_redis``).
REDIS_WAIT_MAX_S = 5.0
#: How long a starting worker waits for Redis before it exits (a supervisor then starts it again).
REDIS_GIVE_UP_S = 300.0
#: How often an idle worker looks at its queues (``GuardQueue.dequeue_any``): RQ's blocking BLMOVE takes one queue
#: and cannot take a lease with the pop, so idle workers poll; a job waits at most this long for an idle worker.
POLL_S = 0.25
#: The longest an idle worker stays in its dequeue: RQ runs its maintenance (registry cleanup, ``LeaseReaper``) only
#: between two dequeues, and its blocking dequeue lasted ``worker_ttl - 15`` s (6.75 min), so an idle worker left a
#: dead worker's job unnoticed for minutes.
REVISIT_S = 5.0
#: RQ's per-queue maintenance lock lasts 899 s: a worker killed during its maintenance stopped every other worker's
#: for 15 minutes. The maintenance takes well under a second.
MAINTENANCE_LOCK_S = 60


class LeasedJob(Job):
    """A job as this worker popped it: with the token of its lease (workers/leases.py)."""

    lease: str | None = None


class LeaseReaper(IntermediateQueue):
    """RQ's intermediate-queue cleanup, replaced: RQ re-queues an id it has seen there for a minute, and its "first
    seen" mark outlives the job's re-queue, so a later pop of the same job was taken as stuck again and the job
    re-queued while it ran. Here an id goes back only when its lease has expired (``leases.reap``), in one step."""

    def cleanup(self, worker: Any, queue: Queue) -> None:
        back = leases.reap(self.connection, self.queue_key, self.key)
        if back:
            log.warning("jobs %s were popped by a worker that died before starting them: back in %s", back, queue.name)


class GuardQueue(Queue):
    """RQ's queue whose pop leaves a recoverable copy and takes a lease, whatever the number of queues."""

    @property
    def intermediate_queue(self) -> IntermediateQueue:
        return LeaseReaper(self.key, connection=self.connection)

    def acquire_maintenance_lock(self) -> bool:
        return bool(self.connection.set(self.registry_cleaning_key, 1, nx=True, ex=MAINTENANCE_LOCK_S))

    @classmethod
    def dequeue_any(  # type: ignore[override]
        cls,
        queues: Any,
        timeout: int | None,
        connection: Redis,
        job_class: type[Job] | None = None,
        serializer: Any = None,
        death_penalty_class: Any = None,
    ) -> tuple[Job, Queue] | None:
        """The first queue's fairest job (workers/leases.py), else the next queue's; with a ``timeout``, poll every
        ``POLL_S`` until one comes (RQ's ``DequeueTimeout`` after ``timeout`` seconds, or ``REVISIT_S``: RQ then
        beats and runs its maintenance when due, and dequeues again)."""
        ordered = list(queues)
        deadline = None if timeout is None else time.monotonic() + min(timeout, REVISIT_S)
        while True:
            waited = False
            for queue in ordered:
                popped = leases.pop(connection, queue.key, queue.intermediate_queue_key, queue.name)
                if popped is None:
                    continue
                if popped.outcome == "leased":  # another worker runs it
                    log.info(
                        "job %s is leased to another worker: this copy goes to the back of %s",
                        popped.job_id,
                        queue.name,
                    )
                    waited = True
                    continue
                if popped.outcome != "popped":
                    log.info("dropped a stale copy of job %s from %s (it has ended)", popped.job_id, queue.name)
                    continue
                found = cls._fetch_dequeued_job(
                    connection, queue.key, popped.job_id, job_class=job_class, serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )  # fmt: skip
                if found is None:  # its hash has expired
                    leases.drop(connection, queue.intermediate_queue_key, popped.job_id, popped.token)
                    continue
                job, _ = found
                if isinstance(job, LeasedJob):
                    job.lease = popped.token
                return found
            if deadline is None:
                return None
            if time.monotonic() >= deadline:
                raise DequeueTimeout(timeout, [q.key for q in ordered])
            time.sleep(DEFER_PAUSE_S if waited else POLL_S)


class GuardWorker(SimpleWorker):
    heartbeat_s: int = 5
    queue_class = GuardQueue
    job_class = LeasedJob
    #: Called with the job right after the pop, before anything else (tests/workers/test_queue_faults.py kills the
    #: worker there); and with (job, True) before the job function runs and (job, False) after it returned.
    on_popped: Callable[[Job], None] | None = None
    on_run: Callable[[Job, bool], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._leases: dict[str, _Lease] = {}

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_s * 3 + 2

    @property
    def lease_ms(self) -> int:
        """A running job's lease: as long as its registry entry (``get_heartbeat_ttl``), so a job RQ's cleanup takes
        for abandoned has no live lease either, unless its worker renewed one in between (then it runs on)."""
        return (self.heartbeat_s * 3 + 2) * 1000

    def mark_stopped(self, job_id: str) -> None:
        """The job was stopped on request: RQ then records it STOPPED and does not retry it."""
        self._stopped_job_id = job_id

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        # RQ calls this before it decides, from this same job object, whether to retry.
        if len(exc_info) > 1 and isinstance(exc_info[1], PERMANENT_ERRORS):
            job.retries_left = 0
        if self._stopped_job_id == job.id:  # DELETE /jobs/{id}: an expected ending, not an error with a traceback
            log.info("job %s stopped on request", job.id)
            return
        super().handle_exception(job, *exc_info)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # RQ removes the id from the intermediate list only for a worker on one queue; every pop here puts it there.
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def handle_job_failure(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> None:
        # The lease goes before RQ re-queues the job for a retry: a pop of the new copy must not find it held.
        self._end_lease(job)
        super().handle_job_failure(job, queue, *args, **kwargs)

    def _beat(self, job: Job, execution: Execution, lease: _Lease) -> None:
        while not lease.done.wait(self.heartbeat_s):
            try:
                if not leases.renew(self.connection, job.id, lease.token, self.lease_ms):
                    log.error("job %s: its lease is held by another worker (this one missed its heartbeats)", job.id)
                self.maintain_heartbeats(job, execution)
            except RedisError as exc:  # a blip must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed: %s", job.id, exc)

    def _end_lease(self, job: Job) -> None:
        lease = self._leases.pop(job.id, None)
        if lease is None:
            return
        lease.done.set()
        if lease.beat is not None and lease.beat is not threading.current_thread():
            lease.beat.join()
        try:
            leases.release(self.connection, job.id, lease.token)
        except RedisError as exc:  # it expires by itself
            log.warning("lease of job %s not released: %s", job.id, exc)

    def _take(self, job: Job, queue: Queue) -> str | None:
        """The lease token to run ``job`` under, or None when it must not run here: another worker holds it, or it
        was canceled between the pop and now."""
        token = job.lease if isinstance(job, LeasedJob) and job.lease else leases.new_token()
        if not leases.renew(self.connection, job.id, token, self.lease_ms):
            log.warning("job %s: another worker holds its lease; not run here", job.id)
            leases.drop(self.connection, queue.intermediate_queue_key, job.id, token)
            return None
        if job.get_status(refresh=True) != JobStatus.QUEUED:
            log.info("job %s is %s: not run", job.id, job.get_status(refresh=False))
            leases.drop(self.connection, queue.intermediate_queue_key, job.id, token)
            return None
        return token

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self.on_popped is not None:
            self.on_popped(job)
        try:
            token = self._take(job, queue)
            if token is None:
                return
            if dip_batches.held_by_leader(self.connection, job.id):
                # Another worker's batch is purifying it (workers/dip_batches.py): waiting for that batch would block
                # this worker, so the job goes back to the queue, behind the others; when it comes round again its
                # output is ready, or its leader died and it runs itself.
                leases.put_back(self.connection, queue.key, queue.intermediate_queue_key, job.id, token)
                log.info(
                    "job %s is in job %s's batch: put back in %s", job.id, job.meta.get("batched_with"), queue.name
                )
                time.sleep(DEFER_PAUSE_S)
                return
        except RedisError as exc:  # the popped id waits in the intermediate list: the reaper puts it back
            log.warning("job %s not started: Redis unreachable (%s)", job.id, exc)
            return
        execution = self.prepare_execution(job)
        lease = self._leases[job.id] = _Lease(token)
        lease.beat = threading.Thread(
            target=self._beat, args=(job, execution, lease), name=f"heartbeat-{job.id}", daemon=True
        )
        if int(job.meta.get("attempts", 0)) > 0:  # an earlier attempt began: whoever ended it, this is a retry
            metrics.record(self.connection, job, "retried")
        lease.beat.start()
        started = time.monotonic()
        if self.on_run is not None:
            self.on_run(job, True)
        try:
            succeeded = self.perform_job(job, queue, execution)
        finally:
            if self.on_run is not None:
                self.on_run(job, False)
            self._end_lease(job)
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
        if status == JobStatus.FAILED:
            try:
                audits.failed_for_good(self.connection, job.meta)
            except RedisError as exc:  # GET /audits/{id} releases it when it finds the audit failed
                log.warning("audit of job %s: its slot not released (%s)", job.id, exc)
        # else RQ re-queued it: counted as "retried" when the next attempt begins

    #: The fast-lane worker running in a thread of this process, if any (``build_worker``).
    fast_lane: FastLaneWorker | None = None

    def work(self, *args: Any, **kwargs: Any) -> bool:
        # Present for /metrics' live-worker gauge and /readyz from start to exit, idle or busy (workers/metrics.py),
        # with the queues this process takes jobs from.
        served = tuple(dict.fromkeys(q.name for w in (self, self.fast_lane) if w is not None for q in w.queues))
        with metrics.Presence(self.connection, self.name, self.heartbeat_s, served):
            lane = self.fast_lane.start(kwargs.get("burst", False)) if self.fast_lane is not None else None
            try:
                return bool(super().work(*args, **kwargs))
            finally:
                if self.fast_lane is not None and lane is not None:
                    self.fast_lane.finish(lane, drain=bool(kwargs.get("burst", False)))


class _Lease:
    """The lease a running job holds, and the heartbeat thread that renews it."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.done = threading.Event()
        self.beat: threading.Thread | None = None


class FastLaneWorker(GuardWorker):
    """A worker in a thread of the main worker's process, on the fast queue only: same detectors, same Redis
    connection pool. Signals stay with the main thread (Python delivers them there only), so this one stops when
    the main worker does; a job's timeout is a timer, not SIGALRM."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass

    def start(self, burst: bool) -> threading.Thread:
        thread = threading.Thread(
            target=self.work, kwargs={"burst": burst, "with_scheduler": False}, name="fast-lane", daemon=True
        )
        thread.start()
        return thread

    def finish(self, thread: threading.Thread, *, drain: bool = False) -> None:
        """Stop after the job in hand (a fast one); an idle dequeue is left to end with the process. With ``drain``
        (burst mode) the lane runs until its queue is empty instead: a job it re-queued for a retry while the main
        worker found nothing left to do is still run in this burst."""
        if drain:
            thread.join()
            return
        self._stop_requested = True
        thread.join(timeout=30 if self.get_state() == WorkerStatus.BUSY else 1)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        return bool(SimpleWorker.work(self, *args, **kwargs))  # presence is the main worker's


class _StopMarkers:
    """``mark_stopped`` for whichever of the process's workers runs the job (RQ compares the job id)."""

    def __init__(self, workers: list[GuardWorker]) -> None:
        self.workers = workers

    def mark_stopped(self, job_id: str) -> None:
        for w in self.workers:
            w.mark_stopped(job_id)


LANES = ("all", "fast", "slow")


def build_worker(settings: Settings, conn: Redis, zoo: Zoo, lanes: str = "all") -> GuardWorker:
    """The process's worker on ``lanes``: every queue, fast first, plus (DFG_WORKER_FAST_LANE) its fast-lane thread;
    or the fast or the slow queue only, without that thread (workers dedicated to one kind of job)."""
    if lanes not in LANES:
        raise ValueError(f"lanes must be one of {list(LANES)}, got {lanes!r}")
    names = {"all": settings.queue_names, "fast": (settings.fast_queue,), "slow": (settings.slow_queue,)}[lanes]
    queues = [GuardQueue(name, connection=conn) for name in names]
    interval = max(10, settings.heartbeat_s * 2)
    worker = GuardWorker(queues, connection=conn, maintenance_interval=interval)
    worker.heartbeat_s = settings.heartbeat_s
    workers = [worker]
    if settings.worker_fast_lane and lanes == "all":
        lane = FastLaneWorker(
            [GuardQueue(settings.fast_queue, connection=conn)], connection=conn, maintenance_interval=interval,
            name=f"{worker.name}-fast",
        )  # fmt: skip
        lane.heartbeat_s = settings.heartbeat_s
        worker.fast_lane = lane
        workers.append(lane)
    context.init(context.WorkerContext(settings=settings, conn=conn, zoo=zoo, worker=_StopMarkers(workers)))
    return worker


def wait_for_redis(conn: Redis, *, give_up_s: float, pause_max_s: float = REDIS_WAIT_MAX_S) -> None:
    """Return once Redis answers. A server loading its AOF (BusyLoadingError) or restarting is waited out with a
    doubling pause up to ``pause_max_s``, for at most ``give_up_s`` seconds; then the last error is raised."""
    deadline = time.monotonic() + give_up_s
    pause = 0.1
    while True:
        try:
            conn.ping()
            return
        except (BusyLoadingError, RedisConnectionError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            what = "is loading its data" if isinstance(exc, BusyLoadingError) else "is not reachable"
            log.warning("Redis %s (%s); trying again in %.1f s", what, exc, pause)
            time.sleep(pause)
            pause = min(2 * pause, pause_max_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deepfake-guard worker", description="Run an RQ worker for deepfake-guard jobs."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: RQ's own)")
    parser.add_argument(
        "--queues", choices=LANES, default="all",
        help="the queues to take jobs from: all (the fast one first, and a fast-lane thread; the default), or only "
        "the fast or the slow one (docs/OPERATIONS.md, Queues)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.redis_url is None:
        raise SystemExit("DFG_REDIS_URL is not set: a worker needs the Redis server the API uses")
    # Connecting is bounded by DFG_REDIS_TIMEOUT_S; the read timeout is left to RQ, which raises it above its
    # blocking dequeue (BLMOVE/BLPOP for worker_ttl - 15 s): a shorter one would break every idle wait.
    conn = Redis.from_url(settings.redis_url, socket_connect_timeout=settings.redis_timeout_s)
    wait_for_redis(conn, give_up_s=REDIS_GIVE_UP_S)
    zoo = Zoo.from_directory(settings.checkpoints_dir, resolve_device(settings.device))
    log.info("worker loaded detectors %s on %s", zoo.names(), zoo.device)
    worker = build_worker(settings, conn, zoo, args.queues)
    if args.name:
        worker.name = args.name
    worker.work(burst=args.burst, logging_level=settings.log_level.upper(), with_scheduler=False)
    return 0
