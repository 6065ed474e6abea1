from __future__ import annotations

from fastapi import APIRouter, Request
from redis.exceptions import RedisError
from rq import Worker

from app.errors import ServiceUnavailable
from app.jobs import queue_for
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness: detectors loaded and Redis reachable")
def readyz(request: Request) -> Readiness:
    state = request.app.state
    detection = getattr(state, "detection", None)
    if detection is None or len(detection.zoo) == 0:
        raise ServiceUnavailable(f"no detectors loaded from {state.settings.checkpoints_dir}")
    if state.redis is None:
        raise ServiceUnavailable("no Redis is configured (set DFG_REDIS_URL, or start with `deepfake-guard serve`)")
    try:
        state.redis.ping()
        workers = Worker.count(queue=queue_for(state.redis, state.settings))
    except RedisError as exc:
        raise ServiceUnavailable(f"Redis is not reachable: {exc}") from exc
    return Readiness(
        status="ready", models=detection.zoo.names(), device=str(detection.zoo.device), redis="ok", workers=workers
    )
