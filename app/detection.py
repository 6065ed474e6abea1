"""The detection service: decoded images in, p_fake out, on the detectors loaded at start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.compute import AttackExecutor, ComputeLock, yield_on_forward
from app.errors import UnknownModel
from models.checkpoint import LoadedCheckpoint
from models.microbatch import MicroBatcher
from models.zoo import Zoo


@dataclass(frozen=True)
class Score:
    p_fake: float
    width: int
    height: int


T = TypeVar("T")


class DetectionService:
    def __init__(
        self, zoo: Zoo, default_model: str, *, max_batch: int = 64, precision: str = "fp32", attack_threads: int = 1
    ) -> None:
        self.zoo = zoo
        self.default_model = default_model
        # Synchronous attacks and detection batches share the CPU/GPU, detection first (app/compute.py).
        self.lock = ComputeLock()
        self.batcher = MicroBatcher(lock=self.lock, max_batch=max_batch, precision=precision)
        self.attacks = AttackExecutor(attack_threads)
        for loaded in zoo:
            yield_on_forward(loaded.detector)

    def close(self) -> None:
        self.batcher.close()
        self.attacks.close()

    async def run_attack(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a synchronous attack in the attack threads, holding the compute behind /detect's batches."""

        def held() -> T:
            with self.lock.attack():
                return fn(*args)

        return await self.attacks.run(held)

    def model(self, name: str | None) -> LoadedCheckpoint:
        chosen = name or self.default_model
        try:
            return self.zoo.get(chosen)
        except KeyError:
            raise UnknownModel(f"unknown model {chosen!r}; choose one of {self.zoo.names()}", value=chosen) from None

    def prepare(self, loaded: LoadedCheckpoint, images: list[Tensor]) -> Tensor:
        """Resize and normalise each image (any size) to the detector's input: k x 3 x h x w."""
        with torch.inference_mode():
            return torch.cat([loaded.detector.preprocess(x.unsqueeze(0).to(self.zoo.device)) for x in images])

    async def score(self, loaded: LoadedCheckpoint, images: list[Tensor]) -> list[Score]:
        batch = await run_in_threadpool(self.prepare, loaded, images)
        probs = await asyncio.wrap_future(self.batcher.submit(loaded, batch))
        return [
            Score(p_fake=p, width=int(x.shape[2]), height=int(x.shape[1])) for p, x in zip(probs, images, strict=True)
        ]
