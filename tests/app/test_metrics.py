"""/metrics in-process (TestClient, real lifespan) against the real bundled Redis, and with Redis unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from redis import Redis
from rq import Queue

from core import jobmetrics
from tests import imagefiles as files
from tests.app.test_api import make_client, png
from tests.conftest import free_port
from workers import metrics as worker_metrics


def scrape(client: TestClient) -> dict[str, list[Sample]]:
    """GET /metrics, parsed by prometheus-client's own parser: family name -> samples."""
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=")  # the Prometheus text format
    return {f.name: list(f.samples) for f in text_string_to_metric_families(resp.text)}


def value(families: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample called ``name`` whose labels include ``labels`` (its family is name minus the suffix)."""
    family = next(f for f in families if name.startswith(f) and name[len(f) :] in ("", "_total", "_count", "_sum"))
    found = [s.value for s in families[family] if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, families[family])
    return found[0]


@pytest.fixture
def client(tiny_checkpoints: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(tiny_checkpoints, redis_url) as c:
        yield c


def test_http_and_detect_traffic_shows_in_the_counters(client: TestClient) -> None:
    client.post("/detect", files={"file": ("a.png", png())})
    two = [("file", ("a.png", png())), ("file", ("b.jpg", files.cmyk_jpeg()))]
    assert client.post("/detect", files=two).status_code == 200
    assert client.get("/jobs/no-such-job").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/static/style.css").status_code == 200
    m = scrape(client)
    assert value(m, "dfg_http_requests_total", route="/detect", method="POST", status="200") == 2
    assert value(m, "dfg_http_request_duration_seconds_count", route="/detect", method="POST") == 2
    # route templates, never raw paths: the label set stays bounded whatever clients ask for
    assert value(m, "dfg_http_requests_total", route="/jobs/{job_id}", method="GET", status="404") == 1
    assert value(m, "dfg_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert value(m, "dfg_http_requests_total", route="/static", method="GET", status="200") == 1
    assert value(m, "dfg_detect_images_total", model="tiny-vgg") == 3
    assert value(m, "dfg_detect_request_images_count") == 2 and value(m, "dfg_detect_request_images_sum") == 3
    assert value(m, "dfg_detect_batch_size_sum", model="tiny-vgg") == 3
    assert value(m, "dfg_redis_up") == 1
    assert value(m, "dfg_queue_jobs", state="queued") == 0 and value(m, "dfg_workers_live") == 0


def test_queue_depth_counts_queued_jobs(client: TestClient) -> None:
    for _ in range(2):
        assert client.post("/purify", files={"file": ("a.png", png())}, data={"method": "jpeg"}).status_code == 202
    m = scrape(client)
    assert value(m, "dfg_queue_jobs", state="queued") == 2
    assert value(m, "dfg_queue_jobs", state="started") == 0


def test_workers_figures_recorded_in_redis_reach_the_scrape(client: TestClient, redis_url: str) -> None:
    conn = Redis.from_url(redis_url)
    queue = Queue("deepfake-guard", connection=conn)
    job = queue.enqueue("workers.jobs.purify", meta={"kind": "purify", "params": {"method": "median"}})
    worker_metrics.record(conn, job, "finished", seconds=3.0)
    worker_metrics.record(conn, job, "finished", seconds=700.0)
    worker_metrics.record(conn, job, "stopped")
    m = scrape(client)
    labels = {"kind": "purify", "method": "median"}
    assert value(m, "dfg_jobs_total", outcome="finished", **labels) == 2
    assert value(m, "dfg_jobs_total", outcome="stopped", **labels) == 1
    assert value(m, "dfg_job_duration_seconds_count", **labels) == 2
    assert value(m, "dfg_job_duration_seconds_sum", **labels) == 703.0
    buckets = {s.labels["le"]: s.value for s in m["dfg_job_duration_seconds"] if s.name.endswith("_bucket")}
    assert buckets["2.5"] == 0 and buckets["5.0"] == 1 and buckets["600.0"] == 1 and buckets["1800.0"] == 2
    assert buckets["+Inf"] == 2
    conn.close()


def test_metrics_answer_without_redis_and_say_so(tiny_checkpoints: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with make_client(tiny_checkpoints, dead, redis_timeout_s=1) as c:
        c.post("/detect", files={"file": ("a.png", png())})
        m = scrape(c)
    assert value(m, "dfg_redis_up") == 0
    assert "dfg_queue_jobs" not in m and "dfg_jobs" not in m and "dfg_workers_live" not in m
    assert value(m, "dfg_http_requests_total", route="/detect", method="POST", status="200") == 1


def test_worker_presence_expires_without_renewal(redis_url: str) -> None:
    conn = Redis.from_url(redis_url)
    with worker_metrics.Presence(conn, "w-1", period_s=60):
        assert conn.zscore(jobmetrics.WORKERS_KEY, "w-1") is not None
    assert conn.zscore(jobmetrics.WORKERS_KEY, "w-1") is None  # removed on exit
    conn.close()


def test_histogram_fields_are_fixed_buckets() -> None:
    assert jobmetrics.bucket_bound(0.1, jobmetrics.DURATION_BUCKETS) == "0.1"
    assert jobmetrics.bucket_bound(0.11, jobmetrics.DURATION_BUCKETS) == "0.25"
    assert jobmetrics.bucket_bound(1e9, jobmetrics.DURATION_BUCKETS) == "+Inf"
    assert jobmetrics.label("cw_l2") == "cw_l2" and jobmetrics.label("x|y") == "other"
    with pytest.raises(ValueError, match="unknown job outcome 'lost'"):
        jobmetrics.outcome_field("purify", "dip", "lost")
    figures = jobmetrics.parse({b"jobs_total|purify|dip|finished": b"3", b"from|a|newer|worker": b"1"})
    assert figures.outcomes == {("purify", "dip", "finished"): 3}
    assert worker_metrics.dip_steps_per_second({"method": "dip", "iterations": 300, "seconds": 2.0}) == 150
    assert worker_metrics.dip_steps_per_second({"method": "jpeg", "seconds": 2.0}) is None
