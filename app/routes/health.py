from __future__ import annotations

from fastapi import APIRouter, Request
from rq import Worker

from app.errors import ServiceUnavailable, problem_responses
from app.jobs import queue_for
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:  # on the event loop: never queued behind threads blocked on Redis
    return Health(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: detectors loaded and Redis reachable",
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
    workers = Worker.count(queue=queue_for(state.redis, state.settings))
    return Readiness(
        status="ready", models=detection.zoo.names(), device=str(detection.zoo.device), redis="ok", workers=workers
    )
