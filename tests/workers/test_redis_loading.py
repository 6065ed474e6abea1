"""A worker started while Redis loads its data waits it out (workers/worker.py ``wait_for_redis``) instead of
exiting with BusyLoadingError. A narrow unit test: Redis answers LOADING for a few calls (the real server does so
for as long as its AOF takes to load)."""

from __future__ import annotations

import logging

import pytest
from redis import Redis
from redis.exceptions import BusyLoadingError

from workers.worker import wait_for_redis


class LoadingRedis(Redis):
    """The real client class, whose PING fails as a loading server's does for the first ``busy`` calls."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy, self.calls = busy, 0

    def ping(self, **kwargs: object) -> bool:  # type: ignore[override]
        self.calls += 1
        if self.calls <= self.busy:
            raise BusyLoadingError("Redis is loading the dataset in memory")
        return True


def test_a_loading_redis_is_waited_out_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    conn = LoadingRedis(busy=3)
    with caplog.at_level(logging.WARNING, logger="deepfake_guard.worker"):
        wait_for_redis(conn, give_up_s=10, pause_max_s=0.2)
    assert conn.calls == 4
    assert sum("is loading its data" in r.message for r in caplog.records) == 3


def test_a_redis_that_never_finishes_loading_is_given_up_on() -> None:
    conn = LoadingRedis(busy=10**6)
    with pytest.raises(BusyLoadingError):
        wait_for_redis(conn, give_up_s=0.5, pause_max_s=0.1)
    assert 2 <= conn.calls <= 10  # bounded back-off: a few tries, not a busy loop
