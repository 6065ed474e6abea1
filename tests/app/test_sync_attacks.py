"""Synchronous attacks no longer hold up /detect (app/compute.py): uvicorn on a loopback port, a long synchronous
CW-L2 attack in flight, and a /detect sent meanwhile, which must be answered while the attack still runs (it
waited for the whole attack behind one lock before). bench/sync_attacks.py measures the latencies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from torch import nn

from tests import imagefiles as files
from tests.conftest import Processes, service_env

pytestmark = [pytest.mark.e2e]


def test_detect_is_answered_while_a_synchronous_attack_runs(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    base = processes.api(service_env(redis_url, tiny_checkpoints, DFG_CW_SYNC_MAX_STEPS="100000"))
    image = files.encode(files.gradient_rgb(96, 96), "PNG")
    attack: dict[str, float] = {}

    def run_attack() -> None:
        data = {"method": "cw_l2", "search_steps": "4", "max_iterations": "1000", "c": "0.0001", "kappa": "1000"}
        resp = httpx.post(f"{base}/attack", files={"file": ("a.png", image)}, data=data, timeout=600)
        attack["status"] = resp.status_code
        attack["ended"] = time.monotonic()

    thread = threading.Thread(target=run_attack)
    thread.start()
    time.sleep(1.0)  # the attack is running (it takes far longer than this)
    assert "ended" not in attack
    resp = httpx.post(f"{base}/detect", files={"file": ("d.png", image)}, timeout=600)
    detected = time.monotonic()
    assert resp.status_code == 200, resp.text
    thread.join(600)
    assert attack["status"] == 200
    assert detected < attack["ended"], "/detect waited for the whole synchronous attack"


def test_a_synchronous_attack_that_finds_no_free_thread_in_time_is_queued(
    processes: Processes, redis_url: str, tiny_checkpoints: Path
) -> None:
    env = service_env(redis_url, tiny_checkpoints, DFG_CW_SYNC_MAX_STEPS="100000", DFG_SYNC_ATTACK_WAIT_S="1")
    base = processes.api(env)  # one attack thread (DFG_SYNC_ATTACK_THREADS)
    image = files.encode(files.gradient_rgb(96, 96), "PNG")
    first: dict[str, int] = {}

    def run_long_attack() -> None:
        data = {"method": "cw_l2", "search_steps": "4", "max_iterations": "1000", "c": "0.0001", "kappa": "1000"}
        first["status"] = httpx.post(
            f"{base}/attack", files={"file": ("a.png", image)}, data=data, timeout=600
        ).status_code

    thread = threading.Thread(target=run_long_attack)
    thread.start()
    time.sleep(2.0)  # the long attack holds the only thread (it takes far longer than this)
    resp = httpx.post(f"{base}/attack", files={"file": ("b.png", image)}, data={"method": "fgsm"}, timeout=600)
    assert resp.status_code == 202, resp.text  # within the synchronous budget, but queued rather than waiting
    assert resp.headers["location"] == f"/jobs/{resp.json()['id']}"
    assert "status" not in first, "the long attack ended before the second request was answered"
    thread.join(600)
    assert first["status"] == 200


class Slow(nn.Module):
    def forward(self, x: float) -> float:
        time.sleep(0.05)
        return x


def test_an_attack_steps_aside_for_detection_at_its_next_forward_pass() -> None:
    from app.compute import ComputeLock, yield_on_forward

    lock, model = ComputeLock(), Slow()
    yield_on_forward(model)
    started, stop = threading.Event(), threading.Event()
    forwards = []

    def attack() -> None:
        with lock.attack():
            started.set()
            while not stop.is_set():
                forwards.append(model(1.0))

    thread = threading.Thread(target=attack)
    thread.start()
    started.wait(5)
    time.sleep(0.2)
    before = len(forwards)
    with lock:  # detection: waits for at most the forward pass in progress
        during = len(forwards)
    stop.set()
    thread.join(5)
    assert during - before <= 1, (before, during)
    assert len(forwards) > during  # and the attack went on afterwards


def test_an_attack_steps_aside_before_its_backward_pass_too() -> None:
    """A step is a forward and a backward pass: a detection that arrives during the forward pass gets the compute
    before the backward one, so it waits for one pass, not for the whole step (app/compute.py)."""
    import torch

    from app.compute import ComputeLock, yield_on_forward

    lock, model = ComputeLock(), torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU(inplace=True))
    yield_on_forward(model)
    yield_on_forward(model)  # registered once however often it is asked
    asides: list[str] = []
    lock.step_aside = lambda: asides.append(threading.current_thread().name)  # type: ignore[method-assign]
    x = torch.rand(3, 4, requires_grad=True)
    with lock.attack():
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    assert asides == [threading.current_thread().name] * 2  # before the forward pass and before the backward one
    reference = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    reference.load_state_dict(model.state_dict())
    (expected,) = torch.autograd.grad(reference(x).sum(), x)
    assert torch.equal(grad, expected)  # the hook leaves the gradient as it was
    with torch.no_grad():
        model(x)  # outside an attack, and without a graph, nothing steps aside
    assert len(asides) == 2
