"""The detection service: upload bytes in, p_fake out, on the detectors loaded at start-up."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from app.errors import UnknownModel
from models.checkpoint import LoadedCheckpoint
from models.detector import FAKE_INDEX
from models.zoo import Zoo


@dataclass(frozen=True)
class Score:
    p_fake: float
    width: int
    height: int


class DetectionService:
    """Runs detectors; one lock keeps concurrent requests from oversubscribing the CPU/GPU."""

    def __init__(self, zoo: Zoo, default_model: str) -> None:
        self.zoo = zoo
        self.default_model = default_model
        # One compute lock: concurrent requests queue here instead of oversubscribing the CPU/GPU.
        self.lock = threading.Lock()

    def model(self, name: str | None) -> LoadedCheckpoint:
        chosen = name or self.default_model
        try:
            return self.zoo.get(chosen)
        except KeyError:
            raise UnknownModel(f"unknown model {chosen!r}; choose one of {self.zoo.names()}", value=chosen) from None

    def score(self, loaded: LoadedCheckpoint, images: list[Tensor]) -> list[Score]:
        """p_fake per image; images of any size are resized inside the detector."""
        detector = loaded.detector
        with self.lock, torch.inference_mode():
            batch = torch.cat([detector.preprocess(x.unsqueeze(0).to(self.zoo.device)) for x in images])
            logits = detector.backbone(batch).float()
            p = torch.softmax(logits, dim=1)[:, FAKE_INDEX].cpu().tolist()
        return [Score(p_fake=float(pf), width=int(x.shape[2]), height=int(x.shape[1])) for pf, x in zip(p, images, strict=True)]
