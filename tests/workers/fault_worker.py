"""The service's worker (``python -m workers``) with the fault test's two hooks (tests/workers/test_queue_faults.py).

- Right after every ``FAULT_KILL_AT_POP_EVERY``-th pop (counted in Redis over all workers), before the job starts,
  it SIGKILLs itself: the moment at which a worker that dies lost a job popped without a recoverable copy.
- Around each run of a job function it records, in Redis, who runs which job (``fault:runners:<id>``, members
  ``pid:thread``) and adds to ``fault:overlaps`` any job found running in another live process or thread: a job run
  twice at the same time. A killed worker's member stays behind; it counts only while its process lives.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import cast

from redis import Redis
from redis.exceptions import RedisError
from rq.job import Job

from core.settings import get_settings
from models.zoo import Zoo, resolve_device
from workers.worker import build_worker, wait_for_redis


def runners_key(job_id: str) -> str:
    return f"fault:runners:{job_id}"


OVERLAPS_KEY = "fault:overlaps"
STARTS_KEY = "fault:starts"
POPS_KEY = "fault:pops"
POP_KILLS_KEY = "fault:pop-kills"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (killed, not yet reaped) runs nothing
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def main() -> None:
    settings = get_settings()
    assert settings.redis_url is not None
    conn = Redis.from_url(settings.redis_url)
    wait_for_redis(conn, give_up_s=120)
    worker = build_worker(settings, conn, Zoo.from_directory(settings.checkpoints_dir, resolve_device("cpu")))
    every = int(os.environ.get("FAULT_KILL_AT_POP_EVERY", "0"))

    def popped(job: Job) -> None:
        try:
            if every and int(conn.incr(POPS_KEY)) % every == 0:
                conn.rpush(POP_KILLS_KEY, job.id)
                os.kill(os.getpid(), signal.SIGKILL)
        except RedisError:
            pass  # Redis is down: this pop is not counted

    unrecorded_ends: list[tuple[str, str]] = []  # ends Redis was down for: recorded before the next start
    lock = threading.Lock()  # the main worker and its fast-lane thread share these

    def run(job: Job, begins: bool) -> None:
        me = f"{os.getpid()}:{threading.get_ident()}"
        with lock:
            if not begins:
                unrecorded_ends.append((job.id, me))
            try:
                while unrecorded_ends:
                    conn.srem(runners_key(unrecorded_ends[0][0]), unrecorded_ends[0][1])
                    unrecorded_ends.pop(0)
                if not begins:
                    return
                conn.rpush(STARTS_KEY, job.id)
                others = [m.decode() for m in cast(set[bytes], conn.smembers(runners_key(job.id)))]
                conn.sadd(runners_key(job.id), me)
            except RedisError:
                return  # Redis is down: the job's own calls fail as well
        for other in others:
            pid = int(other.split(":")[0])
            if other != me and alive(pid):
                conn.rpush(OVERLAPS_KEY, f"{job.id} {me} {other}")

    for w in (worker, worker.fast_lane):
        if w is not None:
            w.on_popped, w.on_run = popped, run
    worker.work(logging_level="INFO", with_scheduler=False)


if __name__ == "__main__":
    main()
