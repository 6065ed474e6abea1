"""The audits service: make an audit (its images and spec into Redis, one RQ job per shard), describe it, stop it,
and hand out its report files. Routes (app/routes/audits.py) stay thin and call these (docs/AUDIT.md, "As a service
job"). Job functions are named by dotted path (``core.audits.SHARD_FUNC``): the API never imports ``workers``.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from redis import Redis
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from app import jobs
from app.audit_upload import AuditUpload
from app.detection import DetectionService
from app.errors import AuditNotFound, AuditNotReady, InvalidParameter, QueueFull, TooManyRequests
from app.schemas import AuditInfo, ThreatProgress
from core import audits
from core.audits import AuditSpec
from core.settings import Settings
from models.attacks.adaptive import resolve_defense
from models.audit import runner
from models.audit.profiles import audit_defense, audit_threats, parse_overrides

#: Bytes of images sent to Redis in one round trip.
STORE_CHUNK_BYTES = 16 << 20
_AUDIT_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    return uuid.uuid4().hex


def threats_of(
    profile: str, eps: Sequence[float] | None, *, sources: Sequence[str] = (), defense: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None, l2: Sequence[float] | None = None,
) -> list[runner.Threat]:  # fmt: skip
    """The audit's threats (``models.audit.profiles.audit_threats``, as the command line makes them); a budget out of
    bounds, or an unknown threat, parameter or value in ``overrides``: a 422 naming it."""
    try:
        return audit_threats(profile, sources=sources, defense=defense, eps=eps, overrides=overrides, l2=l2)
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None


def transfer_sources(service: DetectionService, values: Sequence[str] | None, audited: str) -> list[str]:
    """``transfer_from`` fields (each a name, or names separated by commas): detectors the service serves (an
    unknown one is the 404 of ``service.model``, naming those it serves), neither the audited one nor a repeat."""
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    for name in names:
        if name == audited:
            raise InvalidParameter(
                f"transfer_from={name!r} is the audited detector; a transfer attack is crafted on another one"
            )
        service.model(name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidParameter(f"transfer_from names {repeated} more than once")
    return names


def overrides_of(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``set`` fields (``THREAT.PARAM=VALUE``), parsed as the command line's ``--set``
    (``models.audit.profiles.parse_overrides``); a malformed one is a 422 naming it."""
    try:
        return parse_overrides(items or [])
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None


def defense_of(given: Mapping[str, Any] | None, profile: str) -> dict[str, Any] | None:
    """The request's defence (``app.routes.attack.defense_request``'s) as the audit stores it: a randomised purifier
    gets the profile's EOT count when none is given, as on the command line (``models.audit.profiles.audit_defense``).
    """
    defense = audit_defense(given, profile)
    try:
        resolve_defense(defense)
    except ValueError as exc:
        raise InvalidParameter(f"defense: {exc}") from None
    return defense


def reserve(conn: Redis, settings: Settings, owner: str, audit_id: str) -> None:
    """Under API keys, hold one of ``owner``'s DFG_MAX_JOBS_PER_KEY slots for the audit (a 429 when they are all
    taken), from now until it is finished, failed or stopped. Its slot key lives as long as a job may until
    ``create`` stores the audit (a request that dies midway gives the slot back then), then as long as the audit."""
    if not settings.keys_required:
        return
    conn.set(audits.slot_key(audit_id), b"1", ex=settings.job_timeout_s)  # first: the count keeps what it names
    try:
        jobs.hold_slot(conn, settings, owner, audits.slot_member(audit_id), ttl_s=settings.audit_ttl_s)
    except TooManyRequests:
        conn.delete(audits.slot_key(audit_id))
        raise


def release(conn: Redis, owner: str, audit_id: str) -> None:
    """Give back the slot ``reserve`` held for an audit that was not created after all."""
    audits.release_slot(conn, owner, audit_id)


def create(
    conn: Redis, settings: Settings, upload: AuditUpload, *, audit_id: str, owner: str, model: str, profile: str,
    eps: Sequence[float] | None, threshold: float | None, transfer_from: Sequence[str] = (),
    defense: Mapping[str, Any] | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
    l2_rms: Sequence[float] | None = None,
) -> AuditSpec:  # fmt: skip
    """Store the images and the spec, then queue the first DFG_AUDIT_QUEUED_SHARDS shards (cheap ones on the fast
    queue, attacks on the slow); each shard that ends queues the next (``core.audits.feed``)."""
    over = {k: dict(v) for k, v in (overrides or {}).items()}
    threats = threats_of(profile, eps, sources=transfer_from, defense=defense is not None, overrides=over, l2=l2_rms)
    waiting = jobs.queued_count(conn, settings)
    if waiting >= settings.max_queue_depth:
        raise QueueFull(
            f"{waiting} jobs are queued (limit {settings.max_queue_depth}); retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        )
    parts = runner.plan(len(upload.items), threats, shard_size=settings.audit_shard_size)
    spec = AuditSpec(
        id=audit_id, owner=owner, model=model, profile=profile, dataset=upload.dataset, items=upload.items,
        eps=None if eps is None else tuple(eps), threshold=threshold, seed=seed, shard_size=settings.audit_shard_size,
        shards=tuple(
            (audits.shard_job_id(audit_id, i), p.key, audits.lane(settings, p.threat.spec.attack))
            for i, p in enumerate(parts)
        ),
        transfer_from=tuple(transfer_from), defense=None if defense is None else dict(defense), overrides=over,
        l2_rms=None if l2_rms is None else tuple(l2_rms),
    )  # fmt: skip
    ttl = settings.audit_ttl_s
    with conn.pipeline(transaction=False) as pipe:
        buffered = 0
        for i, body in enumerate(upload.files):
            pipe.hset(audits.images_key(audit_id), str(i), body)
            pipe.expire(audits.images_key(audit_id), ttl)
            buffered += len(body)
            if buffered >= STORE_CHUNK_BYTES:  # a 200 MB data set is sent in parts, not copied whole once more
                pipe.execute()
                buffered = 0
        pipe.set(audits.spec_key(audit_id), spec.to_json(), ex=ttl)  # last: a spec's images are all there
        if settings.keys_required:  # the slot ``reserve`` took, for as long as the audit may live
            pipe.set(audits.slot_key(audit_id), b"1", ex=ttl)
        pipe.execute()
    with conn.pipeline(transaction=True) as pipe:
        pipe.rpush(audits.pending_key(audit_id), *range(len(parts)))
        pipe.expire(audits.pending_key(audit_id), ttl)
        pipe.execute()
    audits.feed(conn, settings, spec, settings.audit_queued_shards)
    return spec


def fetch(conn: Redis, audit_id: str, owner: str) -> AuditSpec:
    """``owner``'s audit; another owner's is answered exactly as one that does not exist."""
    missing = AuditNotFound(f"no audit with id {audit_id[:80]!r} (it never existed or has expired)")
    if not _AUDIT_ID.fullmatch(audit_id):
        raise missing
    spec = audits.load_spec(conn, audit_id)
    if spec is None or spec.owner != owner:
        raise missing
    return spec


def _job_error(job: Job) -> str:
    result = job.latest_result()
    lines = [ln for ln in (result.exc_string if result and result.exc_string else "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no error message"


def _state(conn: Redis, settings: Settings, spec: AuditSpec, done: set[str]) -> tuple[str, str | None]:
    if audits.is_stopped(conn, spec.id):
        return "stopped", "stopped on request (DELETE)"
    if conn.exists(audits.report_key(spec.id, "report.json")):
        return "finished", None
    jobs.sweep_abandoned(conn, settings)  # a dead worker's shard goes back to its queue even with no worker left
    waiting = {int(i) for i in cast(list[bytes], conn.lrange(audits.pending_key(spec.id), 0, -1))}
    popped = [i for i, (_, key, _) in enumerate(spec.shards) if key not in done and i not in waiting]
    in_flight, running = 0, False
    for i, job in zip(popped, Job.fetch_many([spec.shards[i][0] for i in popped], connection=conn), strict=True):
        if job is None:  # popped from the line by a worker that died before queueing it
            audits.queue_shard(conn, settings, spec, i)
            in_flight += 1
        elif job.get_status(refresh=False) == JobStatus.FAILED:
            conn.delete(audits.pending_key(spec.id))  # no report can come: queue no more of its shards
            audits.release_slot(conn, spec.owner, spec.id)
            return "failed", f"shard {job.kwargs.get('shard')} failed: {_job_error(job)}"
        else:
            in_flight += 1
            running = running or job.get_status(refresh=False) == JobStatus.STARTED
    if waiting and in_flight < settings.audit_queued_shards:  # a worker died between its shard's end and the feed
        audits.feed(conn, settings, spec, settings.audit_queued_shards - in_flight)
    if len(done) == len(spec.shards):
        assembly = audits.ensure_assembly(conn, settings, spec)
        if assembly is not None and assembly.get_status(refresh=True) == JobStatus.FAILED:
            audits.release_slot(conn, spec.owner, spec.id)
            return "failed", f"the assembly of the report failed: {_job_error(assembly)}"
        return "started", None
    return ("started" if done or running else "queued"), None


def describe(conn: Redis, settings: Settings, spec: AuditSpec) -> AuditInfo:
    done = {m.decode() for m in cast(set[bytes], conn.smembers(audits.done_key(spec.id)))}
    status, error = _state(conn, settings, spec, done)
    totals = Counter(key.rsplit("@", 1)[0] for _, key, _ in spec.shards)
    finished = Counter(key.rsplit("@", 1)[0] for key in done)
    progress = [ThreatProgress(threat=t, done=finished[t], total=n) for t, n in totals.items()]
    elapsed = max(0.0, time.time() - spec.created_at)
    eta = None
    if status == "finished":
        eta = 0.0
    elif status in ("queued", "started") and done:
        eta = elapsed / len(done) * (len(spec.shards) - len(done))
    reports = {name: f"/audits/{spec.id}/{name}" for name in audits.REPORT_FILES} if status == "finished" else None
    return AuditInfo(
        id=spec.id, status=status, model=spec.model, profile=spec.profile, images=len(spec.items),  # type: ignore[arg-type]
        created_at=datetime.fromtimestamp(spec.created_at, UTC), done=len(done), total=len(spec.shards),
        progress=progress, eta_s=eta, error=error, reports=reports,
    )  # fmt: skip


def cancel(conn: Redis, settings: Settings, spec: AuditSpec) -> AuditInfo:
    """Stop the audit: queued shards are canceled; running ones end their run and their result is dropped (a shard
    is one threat on at most ``runner.SHARD_SIZE`` images); no report is assembled, and the audit's slot among its
    owner's jobs is free. A finished audit stays."""
    if not conn.exists(audits.report_key(spec.id, "report.json")):
        conn.set(audits.stopped_key(spec.id), b"1", ex=settings.audit_ttl_s)
        conn.delete(audits.pending_key(spec.id))
        ids = [job_id for job_id, _, _ in spec.shards] + [audits.assembly_job_id(spec.id)]
        for job in Job.fetch_many(ids, connection=conn):
            if job is not None and job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.DEFERRED):
                with contextlib.suppress(InvalidJobOperation):
                    job.cancel()
        audits.release_slot(conn, spec.owner, spec.id)
    return describe(conn, settings, spec)


def report_file(conn: Redis, settings: Settings, spec: AuditSpec, name: str) -> bytes:
    body = cast(bytes | None, conn.get(audits.report_key(spec.id, name)))
    if body is None:
        info = describe(conn, settings, spec)
        why = f": {info.error}" if info.error else ""
        raise AuditNotReady(
            f"audit {spec.id} is {info.status} ({info.done}/{info.total} shards done){why}; {name} exists once it "
            "is finished"
        )
    return bytes(body)
