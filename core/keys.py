"""Redis key names shared by the API (writer) and the workers (reader). Plain strings, no logic."""

PREFIX = "dfg"


def input_key(token: str) -> str:
    """An uploaded image, passed to a job by reference (never as a pickled tensor)."""
    return f"{PREFIX}:input:{token}"


def result_png_key(job_id: str) -> str:
    return f"{PREFIX}:result:{job_id}:png"


def stop_key(job_id: str) -> str:
    """Set by DELETE /jobs/{id}; the running job's stop check polls it."""
    return f"{PREFIX}:stop:{job_id}"


def idempotency_key(owner: str, key: str) -> str:
    """A client's Idempotency-Key, in the namespace of the API key that sent it (``owner``: app/auth.py)."""
    return f"{PREFIX}:idem:{owner}:{key}"


def owner_jobs_key(owner: str) -> str:
    """Sorted set of an API key's jobs that may still be queued or running (its cap: DFG_MAX_JOBS_PER_KEY)."""
    return f"{PREFIX}:owner:{owner}:jobs"


def rate_key(owner: str) -> str:
    """An API key's token bucket (DFG_RATE_LIMIT_PER_MIN, DFG_RATE_LIMIT_BURST)."""
    return f"{PREFIX}:rate:{owner}"


def worker_queues_key(name: str) -> str:
    """The queues a live worker takes jobs from, renewed with its presence (core/jobmetrics.py WORKERS_KEY)."""
    return f"{PREFIX}:worker:{name}:queues"


PURIFY_FUNC = "workers.jobs.purify"
ATTACK_FUNC = "workers.jobs.attack"


def claim_key(job_id: str) -> str:
    """A queued DIP job taken into another job's batch; expires if that worker dies."""
    return f"{PREFIX}:claim:{job_id}"


def batched_result_key(job_id: str) -> str:
    """The result JSON a batch leader left for a claimed job (its image is under ``result_png_key``)."""
    return f"{PREFIX}:batched:{job_id}:json"


def lease_key(job_id: str) -> str:
    """The lease of the worker that popped or runs a job (workers/leases.py); expires unless its heartbeat renews it."""
    return f"{PREFIX}:lease:{job_id}"


def job_owner_key(job_id: str) -> str:
    """The API key (``owner``: app/auth.py) a queued job belongs to, read by the fair pop (workers/leases.py)."""
    return f"{PREFIX}:job-owner:{job_id}"


def served_key(queue: str) -> str:
    """Sorted set: owner -> the turn at which the fair pop last served it from ``queue`` (workers/leases.py)."""
    return f"{PREFIX}:served:{queue}"


def served_seq_key(queue: str) -> str:
    """The turn counter behind ``served_key``."""
    return f"{PREFIX}:served:{queue}:seq"
