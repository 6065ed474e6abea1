"""Container health check for a worker: Redis answers and a worker of this host is registered."""

from __future__ import annotations

import socket

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from core.settings import get_settings


def healthy() -> tuple[bool, str]:
    settings = get_settings()
    if settings.redis_url is None:
        return False, "DFG_REDIS_URL is not set"
    try:
        conn = Redis.from_url(settings.redis_url, socket_timeout=3)
        workers = Worker.all(queue=Queue(settings.queue_name, connection=conn))
    except RedisError as exc:
        return False, f"Redis unreachable: {exc}"
    host = socket.gethostname()
    mine = [w for w in workers if w.hostname == host]
    return (True, f"{len(mine)} worker(s) on {host}") if mine else (False, f"no worker registered from {host}")


if __name__ == "__main__":
    ok, message = healthy()
    print(message)
    raise SystemExit(0 if ok else 1)
