"""One cost plan per job (core/job_plan.py): the queue choice (app/jobs.py ``lane_for``), the route's synchronous
budget and the worker's progress cap read the same plan, and a job that would hold the fast lane for minutes waits
in the slow one (docs/OPERATIONS.md, "Queues")."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from app.compute import AttackExecutor, AttackThreadsBusy
from app.jobs import lane_for
from core.job_plan import JobPlan, plan_attack, plan_job
from core.settings import Settings
from models import attacks
from models.attacks.adaptive import resolve_defense
from tests import imagefiles as files


@pytest.fixture
def settings(tiny_checkpoints: Path) -> Settings:
    return Settings(checkpoints_dir=tiny_checkpoints, device="cpu")  # type: ignore[arg-type]


def png(height: int, width: int) -> bytes:
    return files.encode(files.gradient_rgb(width, height), "PNG")


def attack(method: str = "pgd", **params: Any) -> dict[str, Any]:
    return {"method": method, "target": "tiny-vgg", "source": "tiny-vgg", "save_format": "png", **params}


def test_an_adaptive_attack_through_dip_goes_to_the_slow_lane(settings: Settings) -> None:
    # 10 PGD steps, but each runs DIP 1,000 steps per EOT sample: minutes to hours, never a fast job.
    params = attack(steps=10, defense={"method": "dip", "eot_samples": 4, "bpda_iterations": 1000})
    assert lane_for(settings, "attack", params, png(512, 512)) == settings.slow_queue
    plan = plan_job(settings, "attack", params, height=512, width=512)
    assert not plan.sync and plan.dip_steps >= 10 * 4 * 1000
    assert plan.expected_s > settings.fast_lane_max_s


def test_an_attack_of_minutes_is_not_a_fast_job_even_within_the_step_bound(settings: Settings) -> None:
    params = attack(steps=2000)  # within DFG_FAST_LANE_MAX_STEPS (2,000), but ~200 expected seconds
    assert lane_for(settings, "attack", params, png(512, 512)) == settings.slow_queue
    cheaper = Settings(checkpoints_dir=settings.checkpoints_dir, device="cpu", attack_step_s=0.001)  # type: ignore[arg-type]
    assert lane_for(cheaper, "attack", params, png(512, 512)) == cheaper.fast_queue


def test_the_lane_counts_face_crops_and_pixels_as_the_synchronous_budget_does(settings: Settings) -> None:
    faces = [[0, 0, 100, 100], [100, 0, 200, 100], [200, 0, 300, 100], [300, 0, 400, 100]]
    params = attack(steps=100, crop="faces", faces=faces)
    plan = plan_job(settings, "attack", params, height=512, width=512)
    assert plan.detector_steps == 400 and not plan.sync  # above DFG_PGD_SYNC_MAX_STEPS (100) with 4 faces
    assert lane_for(settings, "attack", attack(steps=10), png(1024, 1024)) == settings.fast_queue
    big = plan_job(settings, "attack", attack(steps=10), height=2048, width=2048)
    assert big.detector_steps == 160 and not big.sync  # 16 reference images per step


def test_the_route_and_the_queue_read_one_plan(settings: Settings) -> None:
    spec = attacks.get("pgd")
    resolved = spec.resolve({"steps": 50})
    defense = resolve_defense({"method": "jpeg", "quality": 50})
    direct = plan_attack(settings, spec, resolved, defense, height=300, width=200)
    from_json = plan_job(
        settings, "attack", attack(steps=50, defense={"method": "jpeg", "quality": 50}), height=300, width=200
    )
    assert direct == from_json == JobPlan.from_json(direct.to_json())
    assert direct.sync and direct.lane == "fast" and direct.steps == 50 and direct.budget == "gradient"


def test_the_plan_of_dip_caps_progress_at_its_presets_steps(settings: Settings) -> None:
    assert plan_job(settings, "purify", {"method": "dip", "preset": "early"}, height=64, width=64).steps == 1000
    assert plan_job(settings, "purify", {"method": "dip", "max_iterations": 77}, height=64, width=64).steps == 77
    jpeg = plan_job(settings, "purify", {"method": "jpeg", "quality": 50}, height=64, width=64)
    assert jpeg.steps == 0 and jpeg.lane == "fast"
    dip = plan_job(settings, "purify", {"method": "dip"}, height=4000, width=4000)
    assert dip.lane == "slow" and dip.dip_steps == 3000  # at its 512 x 512 working size, not 4000 x 4000


def test_a_synchronous_attack_waits_for_a_thread_no_longer_than_allowed() -> None:
    release = threading.Event()

    async def scenario() -> list[str]:
        executor = AttackExecutor(1)
        busy = asyncio.ensure_future(executor.run(release.wait, 60))
        await asyncio.sleep(0.05)  # the one thread is taken
        outcome = []
        try:
            await executor.run(lambda: "ran", wait_s=0.2)
            outcome.append("ran while busy")
        except AttackThreadsBusy:
            outcome.append("busy")
        release.set()
        await busy
        outcome.append(await executor.run(lambda: "ran", wait_s=0))
        executor.close()
        return outcome

    assert asyncio.run(scenario()) == ["busy", "ran"]
