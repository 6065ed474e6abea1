"""Per-process state of a worker: settings, Redis connection and detectors, created once by ``init``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from core.settings import Settings
from models.zoo import Zoo


class StopMarker(Protocol):
    def mark_stopped(self, job_id: str) -> None: ...


@dataclass
class WorkerContext:
    settings: Settings
    conn: Redis
    zoo: Zoo
    worker: StopMarker | None = None


_context: WorkerContext | None = None


def init(ctx: WorkerContext) -> WorkerContext:
    global _context
    _context = ctx
    return ctx


def get() -> WorkerContext:
    if _context is None:
        raise RuntimeError("worker runtime is not initialised: start jobs through `deepfake-guard worker`")
    return _context
