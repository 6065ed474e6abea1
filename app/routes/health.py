from __future__ import annotations

import time
from typing import cast

from fastapi import APIRouter, Request
from redis import Redis

from app.errors import ServiceUnavailable, problem_responses
from app.jobs import all_queues
from app.schemas import Health, Readiness
from core import jobmetrics, keys
from core.settings import Settings

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:  # on the event loop: never queued behind threads blocked on Redis
    return Health(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: detectors loaded, Redis reachable, a live worker for every queue with work",
    responses=problem_responses(503),
)
def readyz(request: Request) -> Readiness:
    state = request.app.state
    detection = getattr(state, "detection", None)
    if detection is None or len(detection.zoo) == 0:
        raise ServiceUnavailable(f"no detectors loaded from {state.settings.checkpoints_dir}")
    if state.redis is None:
        raise ServiceUnavailable("no Redis is configured (set DFG_REDIS_URL, or start with `deepfake-guard serve`)")
    # A RedisError becomes the same 503 as on every other route (app/errors.py: Retry-After, no password shown).
    state.redis.ping()
    workers = live_workers(state.redis, state.settings)
    if not workers:
        raise ServiceUnavailable(
            f"no live worker: none has renewed its presence in the last {3 * state.settings.heartbeat_s} s "
            "(3 x DFG_HEARTBEAT_S); queued jobs would wait",
            headers={"Retry-After": str(state.settings.heartbeat_s)},
        )
    for queue in all_queues(state.redis, state.settings):
        if queue.count and not any(queue.name in served for served in workers.values()):
            raise ServiceUnavailable(
                f"{queue.count} jobs wait in queue {queue.name!r} and no live worker takes jobs from it "
                f"(live workers take {sorted({q for served in workers.values() for q in served})})",
                headers={"Retry-After": str(state.settings.heartbeat_s)},
            )
    return Readiness(
        status="ready", models=detection.zoo.names(), device=str(detection.zoo.device), redis="ok",
        workers=len(workers),
    )  # fmt: skip


def live_workers(conn: Redis, settings: Settings) -> dict[str, set[str]]:
    """Workers whose presence beat (workers/metrics.py, every DFG_HEARTBEAT_S) is less than 3 periods old, with
    the queues each takes. RQ's own registry cannot tell: it keeps a SIGKILLed worker for its whole TTL."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(jobmetrics.WORKERS_KEY, "-inf", time.time())
        pipe.zrange(jobmetrics.WORKERS_KEY, 0, -1)
        names = [n.decode() for n in pipe.execute()[1]]
    if not names:
        return {}
    served = cast(list[bytes | None], conn.mget([keys.worker_queues_key(n) for n in names]))
    # A worker of an older version writes no queue list: counted as taking every queue.
    return {
        n: set(q.decode().split(",")) if q else set(settings.queue_names) for n, q in zip(names, served, strict=True)
    }
