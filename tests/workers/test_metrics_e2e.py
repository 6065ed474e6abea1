"""/metrics after real traffic: uvicorn, the bundled Redis and real worker processes (the workers' figures reach
the API's scrape through Redis: core/jobmetrics.py)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests import imagefiles as files
from tests.conftest import Processes, service_env, wait_for
from tests.workers.test_e2e_jobs import job, poll_until, submit

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics, parsed by prometheus-client's own parser: (name, labels) -> value."""
    resp = httpx.get(f"{base}/metrics", timeout=30)
    assert resp.status_code == 200, resp.text
    samples: list[Sample] = [s for f in text_string_to_metric_families(resp.text) for s in f.samples]
    return {(s.name, frozenset(s.labels.items())): s.value for s in samples}


def get(m: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in m, f"{name}{labels} not in {sorted(k for k in m if k[0].startswith('dfg_'))}"
    return m[key]


DIP = {"kind": "purify", "method": "dip"}


def test_counters_show_detect_traffic_a_finished_and_a_stopped_job(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    processes.worker(env)
    png = files.encode(files.gradient_rgb(48, 40), "PNG")
    for _ in range(3):
        assert httpx.post(f"{base}/detect", files={"file": ("g.png", png)}, timeout=30).status_code == 200
    done = submit(base, method="dip", max_iterations="60", stop="fixed")
    assert poll_until(base, done, {"finished", "failed"}, 120)[0]["status"] == "finished"
    long = submit(base, method="dip", max_iterations="20000", stop="fixed")
    wait_for(lambda: (job(base, long)["progress"] or {}).get("iteration", 0) > 0, 120, "the long job to make progress")
    assert httpx.delete(f"{base}/jobs/{long}", timeout=30).status_code == 202
    assert poll_until(base, long, {"stopped", "finished", "failed"}, 30)[0]["status"] == "stopped"

    m = scrape(base)
    assert get(m, "dfg_http_requests_total", route="/detect", method="POST", status="200") == 3
    assert get(m, "dfg_detect_images_total", model="tiny-vgg") == 3
    assert get(m, "dfg_http_requests_total", route="/purify", method="POST", status="202") == 2
    assert get(m, "dfg_jobs_total", outcome="finished", **DIP) == 1
    assert get(m, "dfg_jobs_total", outcome="stopped", **DIP) == 1
    assert get(m, "dfg_job_duration_seconds_count", **DIP) == 1  # the finished job only
    assert 0 < get(m, "dfg_job_duration_seconds_sum", **DIP) < 120
    assert get(m, "dfg_dip_steps_per_second_count") == 1 and get(m, "dfg_dip_steps_per_second_sum") > 0
    result = job(base, done)["result"]
    assert get(m, "dfg_dip_steps_per_second_sum") == pytest.approx(result["iterations"] / result["seconds"])
    assert get(m, "dfg_queue_jobs", state="queued") == 0  # back to 0
    assert get(m, "dfg_queue_jobs", state="finished") == 1 and get(m, "dfg_queue_jobs", state="failed") == 1
    assert get(m, "dfg_workers_live") == 1 and get(m, "dfg_redis_up") == 1


def test_a_retry_after_a_worker_death_is_counted_and_the_dead_worker_leaves(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1")
    base = processes.api(env)
    worker = processes.worker(env)
    job_id = submit(base, method="dip", max_iterations="400", stop="fixed")
    wait_for(lambda: (job(base, job_id)["progress"] or {}).get("iteration", 0) > 0, 120, "the job to make progress")
    assert get(scrape(base), "dfg_workers_live") == 1
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    # its presence lapses after 3 heartbeats; nobody removed it
    wait_for(lambda: get(scrape(base), "dfg_workers_live") == 0, 15, "the dead worker to leave dfg_workers_live")
    processes.worker(env)
    info, _ = poll_until(base, job_id, {"finished", "failed"}, 240)
    assert info["status"] == "finished" and info["attempts"] == 2
    m = scrape(base)
    assert get(m, "dfg_jobs_total", outcome="retried", **DIP) == 1
    assert get(m, "dfg_jobs_total", outcome="finished", **DIP) == 1
    assert get(m, "dfg_workers_live") == 1
    assert get(m, "dfg_queue_jobs", state="queued") == 0 and get(m, "dfg_queue_jobs", state="started") == 0


def test_each_queues_backlog_in_expected_seconds_comes_from_the_jobs_plans(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    # No worker: the jobs stay queued. Steps priced at binary fractions, so the sums are exact.
    env = service_env(redis_url, tiny_checkpoints, DFG_ATTACK_STEP_S="0.25", DFG_DIP_STEP_S="0.5",
                      DFG_PGD_SYNC_MAX_STEPS="10")  # fmt: skip
    base = processes.api(env)
    submit(base, method="jpeg", quality="50")
    dip = submit(base, method="dip", max_iterations="1000", stop="fixed")
    png = files.encode(files.gradient_rgb(48, 40), "PNG")
    attack = httpx.post(
        f"{base}/attack", files={"file": ("a.png", png, "image/png")}, data={"method": "pgd", "steps": "50"}, timeout=60
    )
    assert attack.status_code == 202, attack.text  # above DFG_PGD_SYNC_MAX_STEPS: queued
    # The plans (core/job_plan.py; docs/OPERATIONS.md, "One cost plan per job"), a 48 x 40 image counting as one
    # 512 x 512: JPEG, 1 detector step (scoring); PGD, 50 steps and the delivered file's judging; DIP, 1,000 DIP steps
    # and the scoring.
    fast, slow = "deepfake-guard", "deepfake-guard-slow"
    m = scrape(base)
    assert get(m, "dfg_queue_expected_seconds", queue=fast) == 0.25 + 51 * 0.25
    assert get(m, "dfg_queue_expected_seconds", queue=slow) == 0.25 + 1000 * 0.5
    assert get(m, "dfg_queue_jobs", state="queued") == 3
    assert httpx.delete(f"{base}/jobs/{dip}", timeout=30).status_code == 200  # canceled: no longer waiting
    m = scrape(base)
    assert get(m, "dfg_queue_expected_seconds", queue=slow) == 0
    assert get(m, "dfg_queue_expected_seconds", queue=fast) == 0.25 + 51 * 0.25
