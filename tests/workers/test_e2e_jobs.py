"""End to end: uvicorn on a loopback port, the bundled Redis server, and real worker processes."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests import imagefiles as files
from tests.conftest import Processes, service_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def submit(base: str, **data: str) -> str:
    png = files.encode(files.gradient_rgb(48, 40), "PNG")
    resp = httpx.post(f"{base}/purify", files={"file": ("g.png", png, "image/png")}, data=data, timeout=30)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/jobs/{resp.json()['id']}"
    return str(resp.json()["id"])


def job(base: str, job_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{base}/jobs/{job_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def poll_until(base: str, job_id: str, statuses: set[str], timeout_s: float) -> tuple[dict[str, Any], list[int]]:
    """Poll a job until it reaches one of ``statuses``; returns its last state and the progress seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = job(base, job_id)
        if info["progress"]:
            seen.append(int(info["progress"]["iteration"]))
        if info["status"] in statuses:
            return info, seen
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not reach {statuses} in {timeout_s} s; last: {info}")


def test_purify_job_finishes_with_png_and_scores(processes: Processes, redis_url: str, tiny_checkpoints: Path) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_DIP_CHANNELS_LAST="true")
    base = processes.api(env)
    processes.worker(env)
    job_id = submit(base, method="dip", max_iterations="300", stop="fixed", seed="1")
    info, seen = poll_until(base, job_id, {"finished", "failed"}, 180)
    assert info["status"] == "finished", info
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert info["attempts"] == 1 and info["expires_at"] is not None
    result = info["result"]
    assert result["iterations"] == 300 and result["width"] == 48 and result["height"] == 40
    # the last progress record is where the loop ended (reports are throttled; an auto stop ends between them)
    assert info["progress"]["stage"] == "dip done (fixed)" and info["progress"]["iteration"] == 300
    assert info["progress"]["fraction"] == 1.0 and info["progress"]["eta_s"] == 0.0
    # the worker ran the engine its settings asked for (no CUDA here: no graphs)
    assert result["runtime"] == {
        "engine": "fast",
        "precision": "fp32",
        "channels_last": True,
        "cuda_graphs": False,
        "shared_input": True,
    }
    assert set(result["detectors"]) == {"tiny-vgg", "tiny-resnet"}
    for scores in result["detectors"].values():
        assert 0 <= scores["p_fake_before"] <= 1 and 0 <= scores["p_fake_after"] <= 1
    png = httpx.get(f"{base}{info['result_url']}", timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (48, 40)


def test_delete_stops_a_running_job_within_seconds(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    processes.worker(env)
    job_id = submit(base, method="dip", max_iterations="20000", stop="fixed")
    wait_for(lambda: (job(base, job_id)["progress"] or {}).get("iteration", 0) > 0, 120, "the job to make progress")
    resp = httpx.delete(f"{base}/jobs/{job_id}", timeout=30)
    assert resp.status_code == 202, resp.text
    t0 = time.monotonic()
    info, _ = poll_until(base, job_id, {"stopped", "finished", "failed"}, 30)
    assert info["status"] == "stopped", info
    assert time.monotonic() - t0 < 10
    assert info["retries_left"] is None or info["attempts"] == 1  # a stopped job is not retried
    # the same worker takes the next job
    other = submit(base, method="jpeg", quality="50")
    assert poll_until(base, other, {"finished", "failed"}, 60)[0]["status"] == "finished"
    # a stop on request is an expected ending: one line, no ERROR with a traceback
    worker_log = "".join(p.read_text(errors="replace") for p in processes.tmp.glob("worker-*.log"))
    assert f"job {job_id} stopped on request" in worker_log
    assert "Traceback" not in worker_log and " ERROR " not in worker_log, worker_log[-3000:]


def test_sigkilled_worker_job_is_retried_by_a_fresh_worker(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1")
    base = processes.api(env)
    worker = processes.worker(env)
    job_id = submit(base, method="dip", max_iterations="400", stop="fixed")
    wait_for(lambda: (job(base, job_id)["progress"] or {}).get("iteration", 0) > 0, 120, "the job to make progress")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    assert job(base, job_id)["status"] == "started"  # nobody has noticed yet
    processes.worker(env)
    info, _ = poll_until(base, job_id, {"finished", "failed"}, 240)
    assert info["status"] == "finished", info
    assert info["attempts"] == 2


def test_sigkilled_worker_without_retries_ends_failed_with_a_reason(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1", DFG_JOB_RETRIES="0")
    base = processes.api(env)
    worker = processes.worker(env)
    job_id = submit(base, method="dip", max_iterations="20000", stop="fixed")
    wait_for(lambda: (job(base, job_id)["progress"] or {}).get("iteration", 0) > 0, 120, "the job to make progress")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    # No worker is alive: the API's own sweep must still move the job out of "started".
    info, _ = poll_until(base, job_id, {"failed", "finished", "queued"}, 30)
    assert info["status"] == "failed", info
    assert "worker" in info["error"] and "died" in info["error"]


def test_queued_cw_attack_finishes_and_its_image_matches_detect(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_CW_SYNC_MAX_STEPS="10")
    base = processes.api(env)
    processes.worker(env)
    png = files.encode(files.gradient_rgb(48, 40), "PNG")
    data = {
        "method": "cw_l2",
        "search_steps": "2",
        "max_iterations": "20",
        "target": "tiny-vgg",
        "source": "tiny-resnet",
    }
    resp = httpx.post(f"{base}/attack", files={"file": ("g.png", png)}, data=data, timeout=30)
    assert resp.status_code == 202, resp.text
    info, _ = poll_until(base, resp.json()["id"], {"finished", "failed"}, 180)
    assert info["status"] == "finished", info
    result = info["result"]
    assert result["target"]["name"] == "tiny-vgg" and result["source"]["name"] == "tiny-resnet"
    adv = httpx.get(f"{base}{info['result_url']}", timeout=30).content
    check = httpx.post(
        f"{base}/detect", files={"file": ("adv.png", adv)}, data={"model": "tiny-vgg"}, timeout=30
    ).json()
    assert check["results"][0]["p_fake"] == pytest.approx(result["p_fake_after"], abs=1e-4)


def test_queued_dip_jobs_are_purified_in_one_batch(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints)
    base = processes.api(env)
    same = [submit(base, method="dip", max_iterations="150", stop="fixed") for _ in range(3)]
    other_seed = submit(base, method="dip", max_iterations="150", stop="fixed", seed="7")
    processes.worker(env)  # starts with all four queued
    results = {j: poll_until(base, j, {"finished", "failed"}, 240)[0] for j in [*same, other_seed]}
    assert all(r["status"] == "finished" for r in results.values()), results
    leader = results[same[0]]["result"]
    assert leader["batch_size"] == 3 and leader["batched_with"] is None
    for j in same[1:]:
        assert results[j]["result"]["batched_with"] == same[0]
        assert results[j]["progress"]["stage"] == "dip done (fixed)"  # the leader's final record, mirrored
        png = httpx.get(f"{base}/jobs/{j}/result", timeout=30)
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (48, 40)
    assert results[other_seed]["result"]["batch_size"] == 1  # a different seed is a different network


def test_claimed_jobs_survive_the_death_of_their_batch_leader(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_HEARTBEAT_S="1")
    base = processes.api(env)
    jobs = [submit(base, method="dip", max_iterations="400", stop="fixed") for _ in range(2)]
    worker = processes.worker(env)
    wait_for(lambda: (job(base, jobs[1])["progress"] or {}).get("iteration", 0) > 0, 120, "the batch to make progress")
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    processes.worker(env)
    for j in jobs:
        info, _ = poll_until(base, j, {"finished", "failed"}, 240)
        assert info["status"] == "finished", info
