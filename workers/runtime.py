"""Per-process state of a worker: settings, Redis connection and detectors, created once by ``init``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from app.settings import Settings
from models.zoo import Zoo


class StopMarker(Protocol):
    def mark_stopped(self, job_id: str) -> None: ...


@dataclass
class Runtime:
    settings: Settings
    conn: Redis
    zoo: Zoo
    worker: StopMarker | None = None


_runtime: Runtime | None = None


def init(runtime: Runtime) -> Runtime:
    global _runtime
    _runtime = runtime
    return runtime


def get() -> Runtime:
    if _runtime is None:
        raise RuntimeError("worker runtime is not initialised: start jobs through `deepfake-guard worker`")
    return _runtime
