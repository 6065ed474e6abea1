"""A Redis blip during a job costs a progress report or a stop check, never the job (narrow units, fakes)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from models.progress import Progress
from workers import jobs


class UnreachableRedis:
    def exists(self, *keys: str) -> int:
        raise RedisConnectionError("Error 111 connecting to unix socket")


class JobWhoseMetaCannotBeSaved:
    id = "job-1"

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.saves = 0

    def save_meta(self) -> None:
        self.saves += 1
        raise RedisConnectionError("Connection reset by peer")


def test_progress_report_survives_an_unreachable_redis() -> None:
    job = JobWhoseMetaCannotBeSaved()
    report = jobs._reporter(job)  # type: ignore[arg-type]
    report(Progress(iteration=10, max_iterations=10, loss=0.1, psnr=30.0, stage="dip"))
    assert job.saves == 1 and job.meta["progress"]["iteration"] == 10  # tried, kept in memory, did not raise


def test_stop_check_survives_an_unreachable_redis() -> None:
    rt = type("Rt", (), {"conn": UnreachableRedis(), "worker": None})()
    should_stop = jobs._stop_check(rt, JobWhoseMetaCannotBeSaved())  # type: ignore[arg-type]
    assert should_stop() is False  # the job goes on; the next check asks Redis again
