"""R1: clean detection on the test split, and the shared plumbing (detectors under test, the test images).

Metrics are ``models.training.binary_metrics`` (accuracy, AUROC with fake as the positive class, per-class
precision/recall), the same numbers ``deepfake-guard train`` writes into a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models import checkpoint, registry
from models.detector import FAKE_INDEX, REAL_INDEX, Detector
from models.training import binary_metrics


@dataclass
class Member:
    """One detector under test. ``role`` is ``base`` (a given checkpoint) or ``lipschitz`` (R3)."""

    name: str
    detector: Detector
    architecture: str
    role: str = "base"
    lipschitz_lambda: float | None = None
    sha256: str | None = None
    path: str | None = None
    note: str = ""
    #: The operating threshold its verdicts use: the checkpoint's fitted one, else 0.5 (as /detect decides).
    threshold: float = 0.5
    threshold_source: str = "default"

    @property
    def family(self) -> str:
        return registry.get(self.architecture).family

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "family": self.family,
            "role": self.role,
            "lipschitz_lambda": self.lipschitz_lambda,
            "sha256": self.sha256,
            "path": self.path,
            "note": self.note,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "fitting": self.detector.fitting.describe(),
        }


def lipschitz_of(meta: checkpoint.CheckpointMeta) -> float | None:
    """The lambda a checkpoint was trained with (``provenance.training.lipschitz_lambda``), None if absent."""
    value = meta.provenance.get("training", {}).get("lipschitz_lambda")
    return None if value is None else float(value)


def load_member(path: str | Path, *, device: torch.device) -> Member:
    loaded = checkpoint.load(path, map_location=device)
    lam = lipschitz_of(loaded.meta)
    threshold, source = loaded.meta.operating_point()
    return Member(
        name=loaded.name,
        detector=loaded.detector,
        architecture=loaded.meta.architecture,
        role="lipschitz" if lam else "base",
        lipschitz_lambda=lam,
        sha256=loaded.sha256,
        path=loaded.path.name,
        threshold=threshold,
        threshold_source=source,
    )


def bb_source(target: Member, members: list[Member]) -> Member | None:
    """The black-box source for ``target``: the first base detector of another family (the paper transfers
    between VGG-16 and ResNet-18), None when there is none."""
    return next((m for m in members if m.role == "base" and m.family != target.family), None)


def subsample(labels: Tensor, n_per_class: int | None, *, seed: int) -> Tensor:
    """Indices of up to ``n_per_class`` images of each class (a seeded draw), fakes first, in file order."""
    if n_per_class is None:
        return torch.arange(labels.numel())
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for cls in (FAKE_INDEX, REAL_INDEX):
        idx = torch.nonzero(labels == cls).flatten()
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:n_per_class]].sort().values)
    return torch.cat(picked)


@torch.no_grad()
def logits_of(detector: Detector, x: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """Logits N x 2 on the CPU, in eval mode, in batches."""
    detector.eval()
    out = [detector(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, 2)


def p_fake_of(detector: Detector, x: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    return torch.softmax(logits_of(detector, x, batch_size=batch_size, device=device), dim=1)[:, FAKE_INDEX]


def clean_metrics(member: Member, fitted: Tensor, labels: Tensor, *, batch_size: int, device: torch.device) -> dict:
    """``binary_metrics`` on images already fitted by this member's own fitting (``models.facecrop.load_folder``)."""
    logits = logits_of(member.detector.prefitted(), fitted, batch_size=batch_size, device=device)
    return binary_metrics(logits, labels)


def threshold_metrics(p_fake: Tensor, labels: Tensor, threshold: float) -> dict[str, Any]:
    """``binary_metrics`` when "fake" means ``p_fake >= threshold`` (the paper's DIP table used 0.25).

    Logits ``(logit(p) - logit(t), 0)`` have ``argmax == fake`` exactly when ``p >= t`` (ties go to fake, as
    in ``binary_metrics``) and rank images as ``p`` does, so AUROC is unchanged.
    """
    p = p_fake.double().clamp(1e-12, 1 - 1e-12)
    margin = torch.log(p / (1 - p)) - torch.log(torch.tensor(threshold / (1 - threshold), dtype=torch.float64))
    logits = torch.zeros(p.numel(), 2, dtype=torch.float64)
    logits[:, FAKE_INDEX] = margin
    return binary_metrics(logits, labels)
