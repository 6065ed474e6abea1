"""/metrics' count of canceled jobs (app/metrics.py), read from the real Redis after a real cancel."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from redis import Redis

from app import jobs
from app.metrics import RedisCollector
from core import keys
from tests.workers.test_queue_guarantees import PNG, settings_for


def test_a_canceled_job_is_counted_as_canceled(tiny_checkpoints: Path, redis_url: str) -> None:
    settings = settings_for(tiny_checkpoints, redis_url)
    with Redis.from_url(redis_url) as conn:
        queued = [
            jobs.enqueue(conn, settings, func=keys.PURIFY_FUNC, kind="purify", image=PNG, params={"method": "jpeg"})[0]
            for _ in range(3)
        ]
        for job in queued[:2]:
            assert jobs.cancel(conn, settings, job) == "canceled"
        depth, _, _, _ = RedisCollector(SimpleNamespace(redis=conn, settings=settings)).read(conn, settings)
    assert depth["canceled"] == 2 and depth["queued"] == 1, depth
