"""The bound on decoded pixels held by all requests at once (app/pixels.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.errors import ServiceUnavailable
from app.pixels import PixelGate
from core.settings import Settings
from tests import imagefiles as files
from tests.app.test_api import assert_problem, make_client


def test_a_request_waits_for_its_pixels_and_gets_them_when_freed() -> None:
    async def scenario() -> list[str]:
        gate = PixelGate(100, wait_s=5.0, retry_after_s=7)
        order: list[str] = []

        async def first() -> None:
            async with gate.hold(80):
                order.append("first holds 80")
                await asyncio.sleep(0.1)
            order.append("first released")

        async def second() -> None:
            await asyncio.sleep(0.01)
            async with gate.hold(50):
                order.append(f"second holds 50 ({gate.free} free)")

        await asyncio.gather(first(), second())
        assert gate.free == 100
        return order

    assert asyncio.run(scenario()) == ["first holds 80", "first released", "second holds 50 (50 free)"]


def test_no_pixels_within_the_wait_is_a_503_with_retry_after_and_nothing_is_held() -> None:
    async def scenario() -> None:
        gate = PixelGate(100, wait_s=0.05, retry_after_s=7)
        async with gate.hold(60):
            with pytest.raises(ServiceUnavailable, match="hold 60 of the 100") as caught:
                async with gate.hold(60):
                    pass
            assert caught.value.headers == {"Retry-After": "7"}
            async with gate.hold(10**9):  # more than the capacity: waits for all of it, so not now either
                pass

    with pytest.raises(ServiceUnavailable):
        asyncio.run(scenario())


def test_the_routes_hold_the_pixels_their_images_declare(tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url, pixels_wait_s=0.2, retry_after_s=9) as client:
        gate: PixelGate = client.app.state.pixel_gate  # type: ignore[attr-defined]
        assert gate.capacity == 2 * 40_000_000
        image = {"file": ("a.png", files.encode(files.gradient_rgb(), "PNG"))}
        gate.free = 40 * 30 - 1  # other requests hold all but one pixel less than this 40 x 30 image needs
        for resp in (
            client.post("/detect", files=image),
            client.post("/attack", files=image, data={"method": "fgsm"}),
            client.post("/purify", files=image, data={"method": "jpeg"}),
        ):
            assert_problem(resp, 503, "DFG_MAX_PIXELS_IN_FLIGHT")
            assert resp.headers["retry-after"] == "9"
        # a file that declares no pixels does not wait: the decoder says what is wrong with it
        assert_problem(client.post("/detect", files={"file": ("x.txt", b"text")}), 422, "not a recognisable image")
        gate.free += 1
        assert client.post("/detect", files=image).status_code == 200
        assert gate.free == 40 * 30  # given back


def test_in_flight_capacity_below_one_image_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="DFG_MAX_PIXELS_IN_FLIGHT"):
        Settings(max_pixels=1000, max_pixels_in_flight=999)
    assert Settings(max_pixels=1000).pixels_in_flight == 2000
