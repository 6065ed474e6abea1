"""The jobs service: enqueue, describe and cancel RQ jobs. Routes stay thin and call these.

The API names job functions by dotted path (``app.keys.PURIFY_FUNC``) and never imports ``workers``.
Status words are RQ's own (docs/CONTRIBUTING.md, convention 8).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from PIL import Image
from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from app import limits
from app.auth import PUBLIC_OWNER
from app.errors import IdempotencyConflict, InvalidParameter, JobNotFound, JobNotReady, QueueFull, TooManyRequests
from app.schemas import JobInfo, JobProgress
from core import keys
from core.job_plan import JobPlan, plan_job
from core.settings import Settings

_ENDED = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
_last_sweep = 0.0


def queue_for(conn: Redis, settings: Settings, name: str | None = None) -> Queue:
    """The queue ``name`` (default: the fast one, ``DFG_QUEUE_NAME``)."""
    return Queue(name or settings.fast_queue, connection=conn)


def all_queues(conn: Redis, settings: Settings) -> list[Queue]:
    return [queue_for(conn, settings, name) for name in settings.queue_names]


def queued_count(conn: Redis, settings: Settings) -> int:
    """Jobs waiting in every queue: what DFG_MAX_QUEUE_DEPTH bounds."""
    with conn.pipeline(transaction=False) as pipe:
        for q in all_queues(conn, settings):
            pipe.llen(q.key)
        return sum(int(n) for n in pipe.execute())


def header_size(image: bytes) -> tuple[int, int]:
    """(height, width) from an already validated image's header (0 x 0 if unreadable: the worker refuses it)."""
    try:
        with Image.open(io.BytesIO(image)) as im:  # the header only
            return im.size[1], im.size[0]
    except (OSError, ValueError):
        return 0, 0


def _plan_if_valid(settings: Settings, kind: str, params: dict[str, Any], image: bytes) -> JobPlan | None:
    """The plan of a job queued without one; None for parameters the worker will refuse (naming them) at once."""
    height, width = header_size(image)
    try:
        return plan_job(settings, kind, params, height=height, width=width)
    except (ValueError, KeyError, TypeError):
        return None


def lane_for(settings: Settings, kind: str, params: dict[str, Any], image: bytes) -> str:
    """The queue of a job queued without a plan: its plan's (``core.job_plan``; docs/OPERATIONS.md, "Queues"), or
    the slow one for parameters the worker will refuse."""
    plan = _plan_if_valid(settings, kind, params, image)
    return settings.slow_queue if plan is None else plan.queue(settings)


def sweep_abandoned(conn: Redis, settings: Settings, *, min_interval_s: float = 2.0) -> None:
    """Retry (or fail) jobs whose worker stopped heart-beating: RQ's own StartedJobRegistry cleanup.

    Workers run it too, but the API also runs it when polled, so a job is never left ``started``
    when no worker is alive to notice.
    """
    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep < min_interval_s:
        return
    _last_sweep = now
    for queue in all_queues(conn, settings):
        StartedJobRegistry(queue=queue).cleanup()


def note_owner(conn: Redis, job_id: str, owner: str, ttl_s: int) -> None:
    """Record whose job this is for the workers' fair pop, which serves API keys in turn (workers/leases.py)."""
    conn.set(keys.job_owner_key(job_id), owner, ex=ttl_s)


def _request_fingerprint(func: str, params: dict[str, Any], image: bytes) -> str:
    h = hashlib.sha256(func.encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(hashlib.sha256(image).digest())
    return h.hexdigest()


#: Deletes the key only if it still holds the given value (another request may have claimed it since).
_DELETE_IF_SAME = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
#: How long a request waits for the job of an identical request that claimed the same key a moment earlier.
CLAIM_WAIT_S = 2.0


def _claim(conn: Redis, settings: Settings, key: str, name: str, claim: str, fingerprint: str) -> Job | None:
    """Claim an Idempotency-Key for a new job (returns None), or return the job that an identical request made.

    A claim is written before its job exists (the job id must be known first), so an identical request can
    find the claim and no job yet: it waits (``CLAIM_WAIT_S``) rather than making a second job. A claim whose
    job never appears (its request failed, or the job expired) is replaced only if unchanged meanwhile.
    """
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        if conn.set(key, claim, nx=True, ex=settings.result_ttl_s):
            return None
        raw = cast(bytes | None, conn.get(key))
        if raw is None:
            continue  # released between the two calls: claim it again
        existing_id, _, existing_fp = raw.decode().partition(" ")
        if existing_fp != fingerprint:
            # The other job's id is not named: it is all a client needs to read that job's result.
            raise IdempotencyConflict(
                f"Idempotency-Key {name!r} was already used with a different request "
                "(another image or other parameters); use a new key for a new request"
            )
        with contextlib.suppress(NoSuchJobError):
            return Job.fetch(existing_id, connection=conn)
        if time.monotonic() < deadline:
            time.sleep(0.02)  # the identical request that claimed the key is creating its job
            continue
        conn.eval(_DELETE_IF_SAME, 1, key, raw)  # its job never came (or expired): start afresh
        deadline = time.monotonic() + CLAIM_WAIT_S


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not key.strip():
        raise InvalidParameter("Idempotency-Key is empty; send a unique key (e.g. a UUID) or leave the header out")


def hold_slot(conn: Redis, settings: Settings, owner: str, job_id: str, *, ttl_s: int | None = None) -> None:
    """Count ``job_id`` (a job's id, or an audit's ``core.audits.slot_member``) among ``owner``'s jobs;
    ``TooManyRequests`` when it has DFG_MAX_JOBS_PER_KEY queued or running already (``app.limits.reserve_job``)."""
    counted = limits.reserve_job(conn, settings, owner, job_id, ttl_s=ttl_s)
    if counted < 0:
        raise TooManyRequests(
            f"this API key has {-counted} jobs queued or running, audits included (limit "
            f"{settings.max_jobs_per_key}); retry when one has ended",
            headers={"Retry-After": str(settings.retry_after_s)},
        )


def enqueue(
    conn: Redis,
    settings: Settings,
    *,
    func: str,
    kind: str,
    image: bytes,
    params: dict[str, Any],
    idempotency_key: str | None = None,
    owner: str = PUBLIC_OWNER,
    limit_owner: bool = False,
    plan: JobPlan | None = None,
) -> tuple[Job, bool]:
    """Queue a job on an already validated image, for ``owner`` (app/auth.py). Returns ``(job, created)``.

    ``plan`` is the job's cost plan (``core.job_plan``), made by the route from the parameters it resolved: it picks
    the queue and travels in the job's meta for the worker; without one it is made here from ``params``.

    With an ``idempotency_key`` (``owner``'s own: keys of other owners never clash), concurrent identical requests
    get one job (the others ``created=False``), and a request that differs gets ``IdempotencyConflict``. With
    ``limit_owner``, more than DFG_MAX_JOBS_PER_KEY queued or running jobs of ``owner`` get ``TooManyRequests``.
    """
    if plan is None:
        plan = _plan_if_valid(settings, kind, params, image)
    fingerprint = _request_fingerprint(func, params, image)
    job_id = uuid.uuid4().hex
    claim = f"{job_id} {fingerprint}"
    check_idempotency_key(idempotency_key)
    idem = keys.idempotency_key(owner, idempotency_key) if idempotency_key is not None else None
    if idem is not None and idempotency_key is not None:
        existing = _claim(conn, settings, idem, idempotency_key, claim, fingerprint)
        if existing is not None:
            return existing, False

    def give_back() -> None:
        if idem is not None:
            conn.eval(_DELETE_IF_SAME, 1, idem, claim)

    if limit_owner:
        try:
            hold_slot(conn, settings, owner, job_id)
        except TooManyRequests:
            give_back()
            raise
    waiting = queued_count(conn, settings)
    if waiting >= settings.max_queue_depth:
        give_back()
        if limit_owner:
            limits.release_job(conn, owner, job_id)
        raise QueueFull(
            f"{waiting} jobs are queued (limit {settings.max_queue_depth}); retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    queue = queue_for(conn, settings, plan.queue(settings) if plan is not None else settings.slow_queue)
    token = uuid.uuid4().hex
    # The input must outlive every attempt of the job, queued time included.
    input_ttl = settings.result_ttl_s + settings.job_timeout_s * (settings.job_retries + 1)
    conn.set(keys.input_key(token), image, ex=input_ttl)
    note_owner(conn, job_id, owner, input_ttl)
    job = queue.enqueue(
        func,
        kwargs={"input_key": keys.input_key(token), "params": params},
        job_id=job_id,
        job_timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.failure_ttl_s,
        # A retried job (its worker died, or a transient error) goes back to the front: it has waited its turn.
        retry=Retry(max=settings.job_retries, enqueue_at_front=True) if settings.job_retries > 0 else None,
        meta={
            "kind": kind,
            "params": params,
            "attempts": 0,
            "owner": owner,
            "plan": None if plan is None else plan.to_json(),
        },
        description=f"{kind} {params.get('method', '')}".strip(),
    )
    return job, True


_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def fetch(conn: Redis, settings: Settings, job_id: str, owner: str = PUBLIC_OWNER) -> Job:
    """``owner``'s job ``job_id``; another owner's job is answered exactly as one that does not exist."""
    # RQ raises on ids outside this alphabet and reads "id:execution" as a job id plus an execution key.
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job with id {job_id[:80]!r}: job ids are 1-64 letters, digits, '_' and '-'")
    sweep_abandoned(conn, settings)
    missing = JobNotFound(f"no job with id {job_id!r} (it never existed or has expired)")
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        raise missing from None
    if str(job.meta.get("owner", PUBLIC_OWNER)) != owner:
        raise missing
    return job


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _error_text(job: Job) -> str | None:
    result = job.latest_result()
    if result is None or not result.exc_string:
        return None
    lines = [ln for ln in result.exc_string.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    if "AbandonedJobError" in result.exc_string:
        return f"the worker running this job died (heartbeat lost) and no retries were left: {lines[-1]}"
    return lines[-1]


def describe(job: Job, settings: Settings) -> JobInfo:
    status = job.get_status(refresh=True) or JobStatus.QUEUED
    meta = job.get_meta(refresh=False)
    ended = _aware(job.ended_at)
    expires_at = None
    if status == JobStatus.FINISHED and ended:
        expires_at = ended + timedelta(seconds=settings.result_ttl_s)
    elif status in _ENDED and ended:
        expires_at = ended + timedelta(seconds=settings.failure_ttl_s)
    progress = None
    raw = meta.get("progress")
    if isinstance(raw, dict):
        progress = JobProgress(**raw)
    result = job.return_value() if status == JobStatus.FINISHED else None
    error = None
    if status == JobStatus.FAILED:
        error = _error_text(job) or "the job failed without an error message"
    elif status == JobStatus.STOPPED:
        error = "stopped on request (DELETE)"
    elif status == JobStatus.CANCELED:
        error = "canceled before it started"
    return JobInfo(
        id=job.id,
        kind=str(meta.get("kind", "")),
        status=str(status.value if isinstance(status, JobStatus) else status),
        params=dict(meta.get("params", {})),
        created_at=_aware(job.created_at),
        enqueued_at=_aware(job.enqueued_at),
        started_at=_aware(job.started_at),
        ended_at=ended,
        expires_at=expires_at,
        attempts=int(meta.get("attempts", 0)),
        retries_left=job.retries_left,
        progress=progress,
        result=result if isinstance(result, dict) else None,
        result_url=f"/jobs/{job.id}/result" if status == JobStatus.FINISHED else None,
        error=error,
    )


def result_png(conn: Redis, job: Job) -> bytes:
    status = job.get_status(refresh=True)
    if status in _ENDED and status != JobStatus.FINISHED:
        raise JobNotReady(f"job {job.id} is {status.value}: it ended without an image (GET /jobs/{job.id} says why)")
    if status != JobStatus.FINISHED:
        raise JobNotReady(
            f"job {job.id} is {status.value if status else 'unknown'}; its image exists once it is finished"
        )
    data = cast(bytes | None, conn.get(keys.result_png_key(job.id)))
    if data is None:
        raise JobNotFound(f"the result image of job {job.id} has expired")
    return bytes(data)


def cancel(conn: Redis, settings: Settings, job: Job) -> str:
    """Cancel a queued job or stop a running one. Returns the status the job moves to."""
    status = job.get_status(refresh=True)
    if status in _ENDED:
        return str(status.value)
    if status == JobStatus.STARTED:
        # The DIP/CW loops poll this key; the worker then marks the job STOPPED (no retry).
        conn.set(keys.stop_key(job.id), b"1", ex=settings.job_timeout_s + 60)
        with contextlib.suppress(InvalidJobOperation):  # between dequeue and start the stop key suffices
            send_stop_job_command(conn, job.id)
        return str(status.value)
    with contextlib.suppress(InvalidJobOperation):  # it ended in the meantime
        job.cancel()
    conn.set(keys.stop_key(job.id), b"1", ex=settings.job_timeout_s + 60)
    return str((job.get_status(refresh=True) or JobStatus.CANCELED).value)
