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


def idempotency_key(key: str) -> str:
    return f"{PREFIX}:idem:{key}"


PURIFY_FUNC = "workers.jobs.purify"
ATTACK_FUNC = "workers.jobs.attack"


def claim_key(job_id: str) -> str:
    """A queued DIP job taken into another job's batch; expires if that worker dies."""
    return f"{PREFIX}:claim:{job_id}"


def batched_result_key(job_id: str) -> str:
    """The result JSON a batch leader left for a claimed job (its image is under ``result_png_key``)."""
    return f"{PREFIX}:batched:{job_id}:json"
