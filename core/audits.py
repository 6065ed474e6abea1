"""An audit as a service job (docs/AUDIT.md, "As a service job"): its parameters, its Redis keys, and the few steps
the API (which makes it) and the workers (which run its shards) both take on it.

Everything of an audit lives in Redis under ``dfg:audit:{id}:*`` with the audit's TTL (DFG_AUDIT_TTL_S): its spec,
its images (the zip's files, as uploaded), one result per shard, the set of shards done, and the three report files
once assembled. Redis, not a folder: the workers may run on other hosts, and every one of them already reaches Redis.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

from core.keys import PREFIX, owner_jobs_key
from core.settings import Settings

SHARD_FUNC = "workers.audit_jobs.run_shard"
ASSEMBLE_FUNC = "workers.audit_jobs.assemble"
#: How long one caller of ``ensure_assembly`` holds the right to queue the assembly.
ASSEMBLY_CLAIM_S = 30
#: The three files of a finished audit (``models.audit.report.write_all``), with their media types.
REPORT_FILES = {"report.json": "application/json", "report.html": "text/html", "per_image.csv": "text/csv"}


def spec_key(audit_id: str) -> str:
    return f"{PREFIX}:audit:{audit_id}:spec"


def images_key(audit_id: str) -> str:
    """Hash: image position (``str(i)``, in the spec's ``items`` order) -> the file's bytes as uploaded."""
    return f"{PREFIX}:audit:{audit_id}:images"


def results_key(audit_id: str) -> str:
    """Hash: shard key (``models.audit.runner.ShardPlan.key``) -> its result JSON."""
    return f"{PREFIX}:audit:{audit_id}:results"


def done_key(audit_id: str) -> str:
    """Set of the shard keys whose result is stored."""
    return f"{PREFIX}:audit:{audit_id}:done"


def pending_key(audit_id: str) -> str:
    """List of the positions (in ``AuditSpec.shards``) of the shards not queued yet, in plan order."""
    return f"{PREFIX}:audit:{audit_id}:pending"


def stopped_key(audit_id: str) -> str:
    """Set by DELETE /audits/{id}: shards not yet run are skipped, results of running ones dropped."""
    return f"{PREFIX}:audit:{audit_id}:stopped"


#: An audit holds one of its owner's DFG_MAX_JOBS_PER_KEY slots: the member ``audit:{id}`` of the owner's jobs
#: (``core.keys.owner_jobs_key``), which ``app.limits.reserve_job`` keeps while the audit's slot key exists
#: (``{SLOT_PREFIX}{id}{SLOT_SUFFIX}``). ``release_slot`` deletes both when the audit ends; the key's TTL, the
#: audit's, gives the slot back when an audit that never ended (its workers gone, never polled) expires.
SLOT_MEMBER, SLOT_PREFIX, SLOT_SUFFIX = "audit:", f"{PREFIX}:audit:", ":slot"


def slot_member(audit_id: str) -> str:
    return f"{SLOT_MEMBER}{audit_id}"


def slot_key(audit_id: str) -> str:
    return f"{SLOT_PREFIX}{audit_id}{SLOT_SUFFIX}"


def report_key(audit_id: str, name: str) -> str:
    return f"{PREFIX}:audit:{audit_id}:file:{name}"


def assembly_claim_key(audit_id: str) -> str:
    return f"{PREFIX}:audit:{audit_id}:assembly-claim"


def assembly_job_id(audit_id: str) -> str:
    return f"{audit_id}-assemble"


def shard_job_id(audit_id: str, index: int) -> str:
    return f"{audit_id}-s{index}"


@dataclass(frozen=True)
class AuditSpec:
    """What the API accepted: the detector by name, the profile and budgets, and the images (name and label each,
    in ``models.audit.runner.AuditData`` order). The shards and their seeds follow from it alone."""

    id: str
    owner: str
    model: str
    profile: str
    dataset: str
    items: tuple[tuple[str, int], ...]
    eps: tuple[float, ...] | None = None
    threshold: float | None = None
    seed: int = 0
    shard_size: int = 16
    created_at: float = field(default_factory=time.time)
    #: Each shard in plan order (cheap threats first): its RQ job id, its key (``ShardPlan.key``) and its queue.
    shards: tuple[tuple[str, str, str], ...] = ()
    #: Detectors of the service that the transfer attacks are crafted on, by name, in the request's order.
    transfer_from: tuple[str, ...] = ()
    #: The defence of the through-a-defence threat as ``models.attacks.adaptive.resolve_defense`` takes it (the
    #: profile's EOT count filled in: ``models.audit.profiles.audit_defense``); None for none.
    defense: dict[str, Any] | None = None
    #: Budget overrides, threat name -> parameters (``models.audit.profiles.parse_overrides`` of the ``set`` items).
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The white-box L2 curve's per-pixel budgets (``models.audit.profiles.threats_for``'s ``l2``); None: the profile's.
    l2_rms: tuple[float, ...] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> AuditSpec:
        data = json.loads(raw)
        data["items"] = tuple((str(n), int(label)) for n, label in data["items"])
        data["eps"] = None if data.get("eps") is None else tuple(float(e) for e in data["eps"])
        data["l2_rms"] = None if data.get("l2_rms") is None else tuple(float(e) for e in data["l2_rms"])
        data["shards"] = tuple((str(j), str(k), str(q)) for j, k, q in data.get("shards", ()))
        data["transfer_from"] = tuple(str(n) for n in data.get("transfer_from", ()))  # absent from older specs
        return cls(**data)


def load_spec(conn: Redis, audit_id: str) -> AuditSpec | None:
    raw = cast(bytes | None, conn.get(spec_key(audit_id)))
    return None if raw is None else AuditSpec.from_json(raw)


def lane(settings: Settings, attack: bool) -> str:
    """The queue of a shard: attacks to the slow queue, the cheap threats (clean, laundering, sanity) to the fast
    one, so they never wait behind DIP (docs/OPERATIONS.md, "Queues")."""
    return settings.slow_queue if attack else settings.fast_queue


def is_stopped(conn: Redis, audit_id: str) -> bool:
    return bool(conn.exists(stopped_key(audit_id)))


def record_shard(conn: Redis, settings: Settings, spec: AuditSpec, key: str, result: dict[str, Any]) -> bool:
    """Store a shard's result; True for exactly one shard: the one whose result completes the set (it then queues the
    assembly).

    The result, the done mark and the count go in one transaction, so one call only sees its own mark complete the
    set; a shard run twice (its worker died after storing) stores the same result again and gets False."""
    with conn.pipeline(transaction=True) as pipe:
        pipe.hset(results_key(spec.id), key, json.dumps(result))
        pipe.sadd(done_key(spec.id), key)
        pipe.scard(done_key(spec.id))
        for k in (results_key(spec.id), done_key(spec.id)):
            pipe.expire(k, settings.audit_ttl_s)
        _, added, done, *_ = pipe.execute()
    return bool(added) and int(done) == len(spec.shards)


def release_slot(conn: Redis, owner: str, audit_id: str) -> None:
    """Give the audit's slot among its owner's jobs back (it finished, failed or was stopped); idempotent. ``conn``
    may be a pipeline: the assembly releases it in the transaction that stores the report."""
    conn.zrem(owner_jobs_key(owner), slot_member(audit_id))
    conn.delete(slot_key(audit_id))


#: The ``kind`` in the meta of an audit's RQ jobs.
JOB_KINDS = ("audit-shard", "audit-assembly")


def failed_for_good(conn: Redis, meta: dict[str, Any]) -> bool:
    """Called by the worker when a job failed with no retry left: for an audit's job, no report can come, so its key's
    slot is given back and no more of its shards are queued now, not when someone next polls it (which may be never).
    True when ``meta`` was an audit job's."""
    if meta.get("kind") not in JOB_KINDS or not meta.get("audit") or not meta.get("owner"):
        return False
    with conn.pipeline(transaction=True) as pipe:
        release_slot(pipe, str(meta["owner"]), str(meta["audit"]))
        pipe.delete(pending_key(str(meta["audit"])))
        pipe.execute()
    return True


def job_options(settings: Settings) -> dict[str, Any]:
    """RQ options of every audit job: the service's timeout, retries and TTLs (docs/OPERATIONS.md)."""
    return {
        "job_timeout": settings.job_timeout_s,
        "result_ttl": settings.result_ttl_s,
        "failure_ttl": settings.failure_ttl_s,
        "retry": Retry(max=settings.job_retries, enqueue_at_front=True) if settings.job_retries > 0 else None,
    }


def queue_shard(conn: Redis, settings: Settings, spec: AuditSpec, index: int) -> Job:
    job_id, key, queue = spec.shards[index]
    return Queue(queue, connection=conn).enqueue(
        SHARD_FUNC,
        kwargs={"audit_id": spec.id, "shard": key},
        job_id=job_id,
        meta={"kind": JOB_KINDS[0], "owner": spec.owner, "audit": spec.id, "attempts": 0, "params": {"shard": key}},
        description=f"audit shard {key}",
        **job_options(settings),
    )


def feed(conn: Redis, settings: Settings, spec: AuditSpec, n: int) -> int:
    """Queue up to ``n`` more of the audit's shards, in plan order; returns how many.

    An audit keeps at most DFG_AUDIT_QUEUED_SHARDS shards queued or running: each shard that ends queues the next,
    so a large audit neither fills the queues (DFG_MAX_QUEUE_DEPTH) nor puts a long line of its shards in front of
    the other jobs. GET /audits/{id} tops the line up if a worker died between popping a shard and queueing it."""
    queued = 0
    while queued < n and not is_stopped(conn, spec.id):
        raw = cast(bytes | None, conn.lpop(pending_key(spec.id)))
        if raw is None:
            break
        queue_shard(conn, settings, spec, int(raw))
        queued += 1
    return queued


def ensure_assembly(conn: Redis, settings: Settings, spec: AuditSpec) -> Job | None:
    """Queue the assembly job unless it exists (then return it) or the audit is stopped.

    Called by the shard that completes the set, and by GET /audits/{id} once every shard is done: if that shard's
    worker died between storing its result and queueing the assembly, the next poll queues it. A short claim
    (``ASSEMBLY_CLAIM_S``) lets one caller at a time queue it. The job retries as every job does (DFG_JOB_RETRIES);
    one that failed for good leaves the audit failed, with its error."""
    if is_stopped(conn, spec.id) or conn.exists(report_key(spec.id, "report.json")):
        return None
    job_id = assembly_job_id(spec.id)
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        pass
    if not conn.set(assembly_claim_key(spec.id), b"1", nx=True, ex=ASSEMBLY_CLAIM_S):
        return None  # another caller is queueing it now
    return Queue(settings.fast_queue, connection=conn).enqueue(
        ASSEMBLE_FUNC,
        kwargs={"audit_id": spec.id},
        job_id=job_id,
        meta={"kind": JOB_KINDS[1], "owner": spec.owner, "audit": spec.id, "attempts": 0},
        description=f"audit {spec.id} assembly",
        **job_options(settings),
    )
