"""FastAPI dependencies: the per-process objects created in the lifespan."""

from __future__ import annotations

from fastapi import Request
from redis import Redis

from app.detection import DetectionService
from app.errors import ServiceUnavailable
from app.pixels import PixelGate
from core.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_detection(request: Request) -> DetectionService:
    service: DetectionService | None = getattr(request.app.state, "detection", None)
    if service is not None:  # FastAPI runs this (a plain def) in its threadpool: a new checkpoint loads off the loop
        service.zoo.refresh(request.app.state.settings.checkpoints_reload_s)
    if service is None or len(service.zoo) == 0:
        raise ServiceUnavailable(
            f"no detectors are loaded (checkpoints_dir={request.app.state.settings.checkpoints_dir})"
        )
    return service


def get_redis(request: Request) -> Redis:
    conn: Redis | None = request.app.state.redis
    if conn is None:
        raise ServiceUnavailable("no Redis is configured (set DFG_REDIS_URL, or start with `deepfake-guard serve`)")
    return conn


def get_pixel_gate(request: Request) -> PixelGate:
    gate: PixelGate = request.app.state.pixel_gate
    return gate
