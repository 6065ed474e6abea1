"""Which failed jobs are retried: the service's worker class, in this process, against the real Redis."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from redis import Redis
from rq.job import Job

from app import jobs
from core import keys
from core.settings import Settings
from models.zoo import Zoo
from tests import imagefiles as files
from workers.worker import build_worker


def run_job(tmp: Path, redis_url: str, params: dict[str, Any], *, expire_input: bool = False) -> dict[str, Any]:
    settings = Settings(checkpoints_dir=tmp, redis_url=redis_url, default_model="tiny-vgg", device="cpu", job_retries=2)  # type: ignore[arg-type]
    png = files.encode(files.gradient_rgb(48, 40), "PNG")
    with Redis.from_url(redis_url) as conn:
        job, _ = jobs.enqueue(conn, settings, func=keys.PURIFY_FUNC, kind="purify", image=png, params=params)
        if expire_input:
            conn.delete(job.kwargs["input_key"])
        zoo = Zoo.from_directory(tmp, torch.device("cpu"))
        build_worker(settings, conn, zoo).work(burst=True, with_scheduler=False)  # retries run in the burst too
        fetched = Job.fetch(job.id, connection=conn)
        return {
            "status": fetched.get_status(refresh=True).value,
            "attempts": fetched.get_meta(refresh=True).get("attempts"),
            "error": jobs.describe(fetched, settings).error,
        }


def test_a_job_whose_parameters_are_wrong_fails_at_once(tiny_checkpoints: Path, redis_url: str) -> None:
    # The API refuses quality=500; a job queued another way (or by an older API) must not run three times.
    out = run_job(tiny_checkpoints, redis_url, {"method": "jpeg", "quality": 500})
    assert out["status"] == "failed" and out["attempts"] == 1, out
    assert "quality" in out["error"]


def test_a_job_whose_input_has_expired_fails_at_once(tiny_checkpoints: Path, redis_url: str) -> None:
    out = run_job(tiny_checkpoints, redis_url, {"method": "jpeg"}, expire_input=True)
    assert out["status"] == "failed" and out["attempts"] == 1, out
    assert "expired" in out["error"]


def test_a_job_that_may_succeed_next_time_is_retried(tiny_checkpoints: Path, redis_url: str, monkeypatch: Any) -> None:
    from dataclasses import replace

    from models.purify import JPEG, PURIFIERS_REGISTRY

    calls = []

    def flaky(x: torch.Tensor, **kwargs: Any) -> Any:
        calls.append(1)
        # Slow enough that the other of the worker's two threads (main and fast lane) finds the queues empty
        # and ends its burst while this attempt runs: the retry must still run in the burst.
        time.sleep(0.3)
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(PURIFIERS_REGISTRY._entries, "jpeg", replace(JPEG, fn=flaky))
    out = run_job(tiny_checkpoints, redis_url, {"method": "jpeg"})
    assert out["status"] == "failed" and out["attempts"] == 3 and len(calls) == 3, out
    assert "out of memory" in out["error"]
