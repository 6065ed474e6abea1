"""The queue's guarantees, each reproduced deterministically (docs/OPERATIONS.md, "What the queue guarantees"): the
service's worker class pops in this process as a worker about to die would, against the real Redis; recovery is left
to a real worker process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from redis import Redis
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus

from app import jobs
from core import keys
from core.settings import Settings
from models.zoo import Zoo
from tests import imagefiles as files
from tests.conftest import Processes, service_env, wait_for
from workers.worker import GuardWorker, build_worker

PNG = files.encode(files.gradient_rgb(48, 40), "PNG")


def settings_for(tmp: Path, redis_url: str, **extra: Any) -> Settings:
    return Settings(checkpoints_dir=tmp, redis_url=redis_url, default_model="tiny-vgg", device="cpu", **extra)  # type: ignore[arg-type]


def enqueue(conn: Redis, settings: Settings, params: dict[str, Any], owner: str = "public") -> Job:
    job, _ = jobs.enqueue(conn, settings, func=keys.PURIFY_FUNC, kind="purify", image=PNG, params=params, owner=owner)
    return job


def a_worker(settings: Settings, conn: Redis, lanes: str = "all") -> GuardWorker:
    return build_worker(settings, conn, Zoo.from_directory(settings.checkpoints_dir, torch.device("cpu")), lanes)


def pop(worker: GuardWorker) -> Job | None:
    """What the worker's loop does before it starts a job: RQ's dequeue, without blocking."""
    found = worker.dequeue_job_and_maintain_ttl(None)
    return None if found is None else found[0]


def finished(conn: Redis, job_id: str) -> bool:
    return bool(Job.fetch(job_id, connection=conn).get_status() == JobStatus.FINISHED)


def where(conn: Redis, job_id: str, settings: Settings) -> list[str]:
    """The lists that hold ``job_id``: queues and intermediate lists."""
    out = []
    for name in settings.queue_names:
        for key in (f"rq:queue:{name}", f"rq:queue:{name}:intermediate"):
            if conn.lpos(key, job_id) is not None:
                out.append(key)
    return out


@pytest.mark.e2e
@pytest.mark.slow
def test_jobs_popped_by_a_worker_that_dies_before_starting_them_still_run(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    settings = settings_for(tiny_checkpoints, redis_url)
    with Redis.from_url(redis_url) as conn:
        cheap = enqueue(conn, settings, {"method": "jpeg", "quality": 50})
        dip = enqueue(conn, settings, {"method": "dip", "max_iterations": 20, "stop": "fixed"})
        dying = a_worker(settings, conn)  # takes both queues, the fast one first
        assert [j.id for j in (pop(dying), pop(dying)) if j is not None] == [cheap.id, dip.id]
        # The worker dies here. Each job must still be somewhere a live worker will find it.
        for j in (cheap, dip):
            assert where(conn, j.id, settings), f"job {j.id} is in no queue and no intermediate list"
        processes.worker(service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1"))
        for j in (cheap, dip):
            wait_for(lambda j=j: finished(conn, j.id), 180, j.id)  # type: ignore[misc]
            assert Job.fetch(j.id, connection=conn).meta["attempts"] == 1  # never started before: not a retry


def test_an_old_stuck_mark_does_not_requeue_a_job_about_to_run(tiny_checkpoints: Path, redis_url: str) -> None:
    # RQ marks an id it finds in the intermediate list and re-queues it a minute later; the mark outlived the
    # re-queue, so the next pop of the same job was taken as stuck at once and the job re-queued while it ran.
    settings = settings_for(tiny_checkpoints, redis_url)
    with Redis.from_url(redis_url) as conn:
        queued = enqueue(conn, settings, {"method": "jpeg", "quality": 50})
        worker = a_worker(settings, conn, "fast")
        popped = pop(worker)
        assert popped is not None and popped.id == queued.id
        queue = worker.queues[0]
        conn.set(IntermediateQueue(queue.key, conn).get_first_seen_key(queued.id), time.time() - 120)
        worker.clean_registries()  # the maintenance every worker runs
        assert conn.lpos(queue.key, queued.id) is None, "the job was re-queued while a worker holds it"
        worker.execute_job(popped, queue)
        assert Job.fetch(queued.id, connection=conn).get_status() == JobStatus.FINISHED
        assert not where(conn, queued.id, settings) and pop(worker) is None


def test_a_second_copy_of_a_job_a_worker_holds_is_not_started(tiny_checkpoints: Path, redis_url: str) -> None:
    settings = settings_for(tiny_checkpoints, redis_url)
    with Redis.from_url(redis_url) as conn:
        queued = enqueue(conn, settings, {"method": "jpeg", "quality": 50})
        first, second = a_worker(settings, conn, "fast"), a_worker(settings, conn, "fast")
        popped = pop(first)
        assert popped is not None
        conn.rpush(first.queues[0].key, queued.id)  # a copy, as RQ's registry cleanup re-queues a late job
        assert pop(second) is None, "a second worker took a job the first one holds"
        first.execute_job(popped, first.queues[0])
        assert pop(second) is None  # the copy of the finished job is dropped
        assert not where(conn, queued.id, settings)


def test_one_keys_queued_jobs_do_not_put_another_keys_job_last(tiny_checkpoints: Path, redis_url: str) -> None:
    settings = settings_for(tiny_checkpoints, redis_url)
    dip = {"method": "dip", "max_iterations": 20, "stop": "fixed"}
    with Redis.from_url(redis_url) as conn:
        many = [enqueue(conn, settings, {**dip, "seed": i}, owner="key-a").id for i in range(20)]
        other = enqueue(conn, settings, {**dip, "seed": 99}, owner="key-b").id
        more = enqueue(conn, settings, {**dip, "seed": 98}, owner="key-b").id
        worker = a_worker(settings, conn, "slow")
        order = [j.id for _ in range(6) if (j := pop(worker)) is not None]
        # Key a's first job, then key b's, in turn while both have jobs waiting; each key's own jobs in their order.
        assert order == [many[0], other, many[1], more, many[2], many[3]], order


def test_a_job_canceled_between_pop_and_start_does_not_run(tiny_checkpoints: Path, redis_url: str) -> None:
    settings = settings_for(tiny_checkpoints, redis_url)
    with Redis.from_url(redis_url) as conn:
        queued = enqueue(conn, settings, {"method": "jpeg", "quality": 50})
        worker = a_worker(settings, conn, "fast")
        popped = pop(worker)
        assert popped is not None
        assert jobs.cancel(conn, settings, Job.fetch(queued.id, connection=conn)) == "canceled"  # DELETE /jobs/{id}
        worker.execute_job(popped, worker.queues[0])
        assert Job.fetch(queued.id, connection=conn).get_status() == JobStatus.CANCELED
        assert conn.get(keys.result_png_key(queued.id)) is None and not where(conn, queued.id, settings)
