"""R3's detectors: one Lipschitz-regularised ResNet per lambda (``models.lipschitz``), by fine-tuning.

The paper trained each regularised ResNet-18 from ImageNet weights for 5 epochs. Here every lambda starts from
the same given ResNet checkpoint (our stand-in for pretrained weights) with HHReLU swapped in (the paper's
smooth activation; same state dict), and lambda = 0 is the control: the same swap and schedule without the
penalty, so a difference between a lambda and the control is the penalty's, not the extra training's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from models import checkpoint, registry
from models.data.folder import ImageFolderDataset
from models.detector import Detector, SigmoidAdapter
from models.evaluation.clean import Member
from models.evaluation.config import EvalConfig
from models.facecrop import CropFolder, folder_for
from models.progress import ProgressFn
from models.training import TrainConfig, train_detector


def _per_class(
    ds: ImageFolderDataset | CropFolder, n: int | None, *, seed: int
) -> ImageFolderDataset | CropFolder | Subset[Any]:
    if n is None:
        return ds
    labels = ds.labels
    gen = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for cls in labels.unique().tolist():
        idx = torch.nonzero(labels == cls).flatten()
        keep += idx[torch.randperm(idx.numel(), generator=gen)[:n]].tolist()
    return Subset(ds, sorted(keep))


def semantics_of(detector: Detector, architecture: str) -> checkpoint.CheckpointMeta:
    """A checkpoint description of ``detector``'s input and output semantics (no provenance, no metrics)."""
    return checkpoint.CheckpointMeta(
        architecture=architecture,
        input_size=detector.input_size,
        mean=tuple(detector.get_buffer("mean").flatten().tolist()),  # type: ignore[arg-type]
        std=tuple(detector.get_buffer("std").flatten().tolist()),  # type: ignore[arg-type]
        logits=1 if isinstance(detector.backbone, SigmoidAdapter) else 2,
        fake_index=detector.fake_index,
        resize=detector.fitting.mode,
        resize_short=detector.fitting.short_side,
        interpolation=detector.fitting.interpolation,
        antialias=detector.fitting.antialias,
    )


def smooth_architecture(architecture: str) -> str:
    name = f"{architecture}_hhrelu"
    registry.get(name)  # ValueError naming the choices when there is no HHReLU variant
    return name


def sweep(
    base: Member,
    data_dir: str | Path,
    out_dir: str | Path,
    config: EvalConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None = None,
    crop: str = "none",
) -> tuple[list[Member], dict[str, Any]]:
    """Fine-tune ``base`` once per ``config.lipschitz_lambdas`` into ``out_dir``; returns the members and a log.

    Each fine-tuned detector keeps the base's semantics (fake index, head, resize mode, input size, mean, std)
    and reads the images as the base does (``models.facecrop.folder_for``; ``crop="faces"``: its face crops)."""
    root = Path(data_dir)
    size = base.detector.input_size
    base_meta = semantics_of(base.detector, base.architecture)
    train_set = _per_class(
        folder_for(root / "train", base.detector, crop=crop), config.lipschitz_train_per_class, seed=config.seed
    )
    val_set = _per_class(
        folder_for(root / "val", base.detector, crop=crop), config.lipschitz_val_per_class, seed=config.seed
    )
    arch = smooth_architecture(base.architecture) if config.lipschitz_smooth_relu else base.architecture
    members, log = [], []
    for lam in config.lipschitz_lambdas:
        # HHReLU has no parameters: the base state dict fits the smooth architecture as it is.
        detector = checkpoint.build(base_meta, architecture=arch)
        detector.backbone.load_state_dict(base.detector.backbone.state_dict())
        train_config = TrainConfig(
            epochs=config.lipschitz_epochs,
            lr=config.lipschitz_lr,
            batch_size=config.lipschitz_batch_size,
            seed=config.seed,
            lipschitz_lambda=lam,
        )
        started = time.perf_counter()
        result = train_detector(detector, train_set, val_set, train_config, device=device, progress=progress)
        seconds = time.perf_counter() - started
        name = f"{base.name}-lipschitz-{lam:g}"
        provenance = {
            "training": {
                **vars(train_config),
                "image_size": list(size),
                "smooth_relu": arch != base.architecture,
                "init": {"checkpoint": base.name, "sha256": base.sha256},
            },
            "dataset": {"path": str(root), "train_images": len(train_set), "val_images": len(val_set)},
            "chosen_epoch": result.best_epoch,
            "note": "evaluation sweep: fine-tuned from the base checkpoint (models/evaluation/sweep.py)",
        }
        meta = replace(base_meta, architecture=arch, provenance=provenance, metrics={"val": result.best_val})
        digest = checkpoint.save(result.detector, Path(out_dir) / name, meta)
        epoch_seconds = [s.seconds for s in result.history]
        log.append(
            {
                "lambda": lam,
                "name": name,
                "seconds": seconds,
                "epoch_seconds": epoch_seconds,
                "train_images": len(train_set),
                "val": result.best_val,
            }
        )
        members.append(
            Member(
                name=name,
                detector=result.detector.eval(),
                architecture=arch,
                role="lipschitz",
                lipschitz_lambda=lam,
                sha256=digest,
                path=str(Path(out_dir) / f"{name}.safetensors"),
                note="control (no penalty)" if lam == 0 else "",
            )
        )
    return members, {"architecture": arch, "base": base.name, "runs": log}
