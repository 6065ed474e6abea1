"""ImageFolder reading: ``ROOT/fake/*`` and ``ROOT/real/*`` to [0, 1] tensors, labels fake=0, real=1.

The same layout and class order as torchvision's ``ImageFolder`` (classes sorted by name, as in the paper),
without its download machinery. Images are resized with the exact resampling the ``Detector`` applies at
inference (bilinear, antialiased), so a model sees the same pixels in training and in service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from models.detector import CLASS_NAMES

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def list_images(root: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> list[tuple[Path, int]]:
    """``(path, label)`` for every image under ``root/<class>/``, label = index in ``class_names``, sorted by path.

    Raises ``FileNotFoundError`` when ``root`` or a class folder is missing and ``ValueError`` when the
    folder holds other class folders (a mislabelled dataset should fail loudly, not train silently).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no ImageFolder at {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if found != sorted(class_names):
        raise ValueError(f"{root} must contain exactly the class folders {list(class_names)}, found {found}")
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        items.extend((p, label) for p in files)
    return items


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> Tensor:
    """One image as 3 x H x W float32 in [0, 1] (RGB), resized to ``size`` (H, W) if given."""
    with Image.open(path) as im:
        pixels = np.array(im.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]
        x = x.clamp(0, 1)
    return x


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Lazily decoded ImageFolder; ``(image 3 x H x W in [0, 1], label)`` items."""

    def __init__(self, root: str | Path, *, image_size: tuple[int, int] | None = None) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.items = list_images(self.root)
        if not self.items:
            raise ValueError(f"{self.root} holds no images ({sorted(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.items[index]
        return read_image(path, self.image_size), label

    @property
    def labels(self) -> Tensor:
        return torch.tensor([label for _, label in self.items], dtype=torch.long)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}


@dataclass
class TensorFolder:
    """A whole ImageFolder in memory: ``images`` N x 3 x H x W in [0, 1], ``labels`` N, and their ``paths``."""

    images: Tensor
    labels: Tensor
    paths: list[Path]


def load_image_folder(root: str | Path, *, image_size: tuple[int, int]) -> TensorFolder:
    """Read every image of an ImageFolder into one tensor (for small sets such as the demo's 64 x 64 splits)."""
    ds = ImageFolderDataset(root, image_size=image_size)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return TensorFolder(images=images, labels=ds.labels, paths=[p for p, _ in ds.items])
