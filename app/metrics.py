"""Prometheus metrics: the API's own (HTTP, /detect) and, read from Redis at scrape time, the queue's and the
workers' (core/jobmetrics.py says why through Redis). The table of metrics is in docs/OPERATIONS.md.

Each app has its own registry (tests build several apps in one process); ``deepfake-guard serve`` runs one
uvicorn process, so one registry holds all of the API's figures.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import jobmetrics
from core.job_plan import JobPlan
from core.settings import Settings

log = logging.getLogger("deepfake_guard.api")

#: Request latency buckets (seconds): /healthz answers in a millisecond, a synchronous CW-L2 attack in a minute.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Images per /detect request (DFG_MAX_FILES is 32 by default) and per forward pass (DFG_DETECT_MAX_BATCH 64).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: The route label of a request no route matched (a 404): one value, whatever the path, so that scanners
#: cannot grow the label set.
UNMATCHED = "<unmatched>"


class ApiMetrics:
    """The API process's own figures, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for collector in (ProcessCollector(registry=None), PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Counter(
            "dfg_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "dfg_http_request_duration_seconds", "Time from request to the end of the response, by route and method.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.detect_images = Counter(
            "dfg_detect_images", "Images scored by /detect, by detector.", ["model"], registry=self.registry
        )
        self.detect_request_images = Histogram(
            "dfg_detect_request_images", "Images per /detect request.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.detect_batch_size = Histogram(
            "dfg_detect_batch_size", "Images per forward pass of the /detect micro-batcher (concurrent requests "
            "merged), by detector.", ["model"], buckets=BATCH_BUCKETS, registry=self.registry,
        )  # fmt: skip

    def observe_detect_batch(self, model: str, size: int) -> None:
        self.detect_batch_size.labels(model).observe(size)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def get_api_metrics(request: Request) -> ApiMetrics:
    """FastAPI dependency: the app's metrics (created in app/main.py)."""
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


def route_template(app: Any, scope: Scope, before: Scope) -> str:
    """The matched route's path template (``/jobs/{job_id}``), never the raw path (unbounded label values).

    ``before`` is the scope as the request arrived: a mount (``/static``) sets no ``scope["route"]`` and rewrites
    the paths of the scope it handled."""
    route = scope.get("route")
    if route is not None:
        return str(route.path)
    return _template_of(app.routes, before) or UNMATCHED


def _template_of(routes: list[Any], scope: Scope) -> str | None:
    """The template of the route in ``routes`` that matches ``scope``. FastAPI keeps an included router as one entry
    (``original_router``, included without a prefix here: app/main.py) whose routes are searched in turn; a request
    answered before routing (a 413 from app/bodylimit.py) has no ``scope["route"]`` to say it."""
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match != Match.FULL:
            continue
        inner = getattr(candidate, "original_router", None)
        if inner is None:
            return str(candidate.path)
        found = _template_of(inner.routes, scope)
        if found is not None:
            return found
    return None


class HttpMetricsMiddleware:
    """Counts every request with its status and times it to the last byte of the response (pure ASGI: the
    response streams through unchanged)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, router_app: Any) -> None:
        self.app, self.metrics, self.router_app = app, metrics, router_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        before = dict(scope)
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before it starts a response

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route, method = route_template(self.router_app, scope, before), scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


#: RQ's job states as this gauge names them, and how each is counted (see RedisCollector.read).
QUEUE_STATES = ("queued", "started", "scheduled", "deferred", "finished", "failed", "canceled")


class RedisCollector(Collector):
    """Queue depth by state, the workers' job figures and live workers, read from Redis at every scrape.

    With Redis unreachable these families are absent and ``dfg_redis_up`` is 0 (the cause is logged): the scrape
    still answers 200 with the API's own figures, so an outage shows as a gap, not as a failed target."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on Redis' answer: nothing to check at registration

    def read(
        self, conn: Redis, settings: Settings
    ) -> tuple[dict[str, int], jobmetrics.JobFigures, int, dict[str, float]]:
        now = time.time()
        states = ("started", "deferred", "finished", "failed", "canceled")
        queues = [Queue(name, connection=conn) for name in settings.queue_names]  # summed over every queue
        with conn.pipeline(transaction=False) as pipe:
            for queue in queues:
                # Registry scores are expiry times (scheduled: the run time): count what the next cleanup would
                # keep, without running it, so a scrape changes nothing. Stopped jobs are kept in "failed" (RQ).
                pipe.lrange(queue.key, 0, -1)  # the ids: their plans give the queue's backlog in seconds
                pipe.zcard(queue.scheduled_job_registry.key)
                for key in (
                    queue.started_job_registry.key, queue.deferred_job_registry.key, queue.finished_job_registry.key,
                    queue.failed_job_registry.key,
                ):  # fmt: skip
                    pipe.zcount(key, now, "+inf")
                # RQ scores a canceled job with the time it was canceled, not an expiry (its registry add has no
                # TTL), so counting from now always gave 0: count those canceled within the failed jobs' TTL.
                pipe.zcount(queue.canceled_job_registry.key, now - settings.failure_ttl_s, "+inf")
            pipe.hgetall(jobmetrics.JOBS_KEY)
            pipe.zremrangebyscore(jobmetrics.WORKERS_KEY, "-inf", now)
            pipe.zcard(jobmetrics.WORKERS_KEY)
            replies = pipe.execute()
        per_queue = 2 + len(states)
        depth = dict.fromkeys(("queued", "scheduled", *states), 0)
        for i in range(len(queues)):
            for state, n in zip(
                ("queued", "scheduled", *states), replies[i * per_queue : (i + 1) * per_queue], strict=True
            ):
                depth[state] += len(n) if state == "queued" else int(n)
        raw, _, workers = replies[len(queues) * per_queue :]
        waiting = {q.name: replies[i * per_queue] for i, q in enumerate(queues)}
        return depth, jobmetrics.parse(raw), int(workers), self.backlog(conn, queues, waiting)

    @staticmethod
    def backlog(conn: Redis, queues: list[Queue], waiting: dict[str, list[bytes]]) -> dict[str, float]:
        """Per queue, the expected seconds of the jobs waiting in it: the sum of their cost plans' ``expected_s``
        (core/job_plan.py, in each job's meta). A job without a plan (its parameters are refused by the worker at
        once) counts 0. One more pipelined round trip, of at most DFG_MAX_QUEUE_DEPTH reads."""
        with conn.pipeline(transaction=False) as pipe:
            for q in queues:
                for job_id in waiting[q.name]:
                    pipe.hget(q.job_class.key_for(job_id.decode()), "meta")
            metas = iter(pipe.execute())
        return {q.name: sum(_expected_s(q, next(metas)) for _ in waiting[q.name]) for q in queues}

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("dfg_redis_up", "1 if the last scrape read the queue's figures from Redis, else 0.")
        conn: Redis | None = getattr(self.state, "redis", None)
        if conn is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            depth, figures, live, backlog = self.read(conn, self.state.settings)
        except RedisError as exc:
            log.warning("/metrics: queue and worker figures left out, Redis is unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families(depth, figures, live, backlog)


def _expected_s(queue: Queue, raw: bytes | None) -> float:
    """A waiting job's expected seconds from its meta's plan; 0 without one (or if it expired meanwhile)."""
    if not raw:
        return 0.0
    try:
        return JobPlan.from_json(queue.serializer.loads(raw)["plan"]).expected_s
    except (KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return 0.0


def families(
    depth: dict[str, int], figures: jobmetrics.JobFigures, live: int, backlog: dict[str, float]
) -> Iterator[Metric]:
    gauge = GaugeMetricFamily("dfg_queue_jobs", "Jobs in the queue and in RQ's registries, by state.", labels=["state"])
    for state in QUEUE_STATES:
        gauge.add_metric([state], depth.get(state, 0))
    yield gauge
    seconds = GaugeMetricFamily(
        "dfg_queue_expected_seconds", "Expected seconds of the jobs waiting in each queue, from their cost plans "
        "(DFG_ATTACK_STEP_S, DFG_DIP_STEP_S).", labels=["queue"],
    )  # fmt: skip
    for queue, total in backlog.items():
        seconds.add_metric([queue], total)
    yield seconds
    outcomes = CounterMetricFamily(
        "dfg_jobs", "Job attempts by how they ended (retried: an attempt that began after an earlier one).",
        labels=["kind", "method", "outcome"],
    )  # fmt: skip
    for (kind, method, outcome), n in sorted(figures.outcomes.items()):
        outcomes.add_metric([kind, method, outcome], n)
    yield outcomes
    durations = HistogramMetricFamily(
        "dfg_job_duration_seconds", "Run time of finished jobs, by kind and method.", labels=["kind", "method"]
    )
    for (kind, method), hist in sorted(figures.durations.items()):
        durations.add_metric([kind, method], hist.cumulative(jobmetrics.DURATION_BUCKETS), hist.total)
    yield durations
    rate = HistogramMetricFamily(
        "dfg_dip_steps_per_second", "DIP optimisation steps per second of finished DIP jobs (iterations / seconds)."
    )
    if figures.dip_rate.counts:
        rate.add_metric([], figures.dip_rate.cumulative(jobmetrics.DIP_RATE_BUCKETS), figures.dip_rate.total)
    yield rate
    workers = GaugeMetricFamily(
        "dfg_workers_live", "Workers whose presence beat (every DFG_HEARTBEAT_S) is less than 3 periods old."
    )
    workers.add_metric([], live)
    yield workers
