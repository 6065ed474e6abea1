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
from app.errors import ServiceUnavailable, UnknownModel
from models.checkpoint import LoadedCheckpoint
from models.facecrop import FaceVerdict, face_crops
from models.faces import Box
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

    def close(self) -> None:
        self.batcher.close()
        self.attacks.close()

    async def run_attack(self, fn: Callable[..., T], *args: Any, wait_s: float | None = None) -> T:
        """Run a synchronous attack in the attack threads, holding the compute behind /detect's batches.
        ``AttackThreadsBusy`` when no thread is free within ``wait_s`` seconds (None: wait as long as it takes)."""

        def held() -> T:
            for loaded in self.zoo:  # checkpoints loaded since start-up too (models/zoo.py picks them up)
                yield_on_forward(loaded.detector)
            with self.lock.attack():
                return fn(*args)

        return await self.attacks.run(held, wait_s=wait_s)

    def model(self, name: str | None) -> LoadedCheckpoint:
        chosen = name or self.default_model
        try:
            return self.zoo.get(chosen)
        except KeyError as exc:
            if chosen == self.default_model:  # its file was removed while the service runs (models/zoo.py)
                raise ServiceUnavailable(
                    f"the default detector {chosen!r} (DFG_DEFAULT_MODEL) is no longer in {self.zoo.directory}; "
                    f"name a model (one of {self.zoo.names()}), or put its checkpoint back"
                ) from None
            raise UnknownModel(str(exc.args[0]), value=chosen) from None

    def prepare(self, loaded: LoadedCheckpoint, images: list[Tensor]) -> Tensor:
        """Resize and normalise each image (any size) to the detector's input: k x 3 x h x w."""
        with torch.inference_mode():
            return torch.cat([loaded.detector.preprocess(x.unsqueeze(0).to(self.zoo.device)) for x in images])

    def prepare_faces(self, loaded: LoadedCheckpoint, images: list[Tensor], boxes: list[list[Box]]) -> Tensor:
        """Every face crop of every image, at the detector's input and normalised: (total faces) x 3 x h x w."""
        det = loaded.detector
        with torch.inference_mode():
            crops = [face_crops(det, x.to(self.zoo.device), b) for x, b in zip(images, boxes, strict=True) if b]
            return det.normalize(torch.cat(crops)) if crops else torch.empty(0)

    async def score_faces(
        self, loaded: LoadedCheckpoint, images: list[Tensor], boxes: list[list[Box]]
    ) -> list[list[FaceVerdict]]:
        """Each image's faces scored on their crops (``models.facecrop``): one micro-batch for all of them."""
        batch = await run_in_threadpool(self.prepare_faces, loaded, images, boxes)
        probs = await asyncio.wrap_future(self.batcher.submit(loaded, batch)) if len(batch) else []
        out, start = [], 0
        for b in boxes:
            out.append([FaceVerdict(box, p) for box, p in zip(b, probs[start : start + len(b)], strict=True)])
            start += len(b)
        return out

    async def score(self, loaded: LoadedCheckpoint, images: list[Tensor]) -> list[Score]:
        batch = await run_in_threadpool(self.prepare, loaded, images)
        probs = await asyncio.wrap_future(self.batcher.submit(loaded, batch))
        return [
            Score(p_fake=p, width=int(x.shape[2]), height=int(x.shape[1])) for p, x in zip(probs, images, strict=True)
        ]
