"""ImageFolder reading: ``ROOT/fake/*`` and ``ROOT/real/*`` to [0, 1] tensors, labels fake=0, real=1.

The same layout and class order as torchvision's ``ImageFolder`` (classes sorted by name, as in the paper),
without its download machinery. Files are read by the service's own reader (``models.images.load_image_file``:
EXIF orientation, 16-bit, CMYK, palette and grey images as an upload is read) and fitted by the detector's own
``Fitting`` (models/fitting.py), so a model sees the same pixels in training, in every evaluation and in service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from models.detector import CLASS_NAMES
from models.fitting import Fitting
from models.images import load_image_file

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


def read_image(path: str | Path) -> Tensor:
    """One image file as 3 x H x W float32 in [0, 1], at its own size, read as the API reads an upload."""
    return load_image_file(path)


def read_fitted(path: str | Path, fitting: Fitting | None) -> Tensor:
    """``read_image`` brought to a detector's input by its ``fitting`` (its own size when None)."""
    x = read_image(path)
    if fitting is None:
        return x
    with torch.no_grad():
        return fitting.apply(x[None])[0]


class ImageFolderDataset(Dataset[tuple[Tensor, int]]):
    """Lazily decoded ImageFolder; ``(image 3 x H x W in [0, 1], label)`` items, each fitted by ``fitting`` (a
    detector's: ``Detector.fitting``) or at its own size."""

    def __init__(self, root: str | Path, *, fitting: Fitting | None = None) -> None:
        self.root = Path(root)
        self.fitting = fitting
        self.items = list_images(self.root)
        if not self.items:
            raise ValueError(f"{self.root} holds no images ({sorted(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.items[index]
        return read_fitted(path, self.fitting), label

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


def load_image_folder(root: str | Path, *, fitting: Fitting | None) -> TensorFolder:
    """Read every image of an ImageFolder into one tensor, fitted to a detector's input (for small sets such as the
    demo's 64 x 64 splits); ``fitting=None`` keeps each image's own size, which must then be the same for all."""
    ds = ImageFolderDataset(root, fitting=fitting)
    read = [ds[i][0] for i in range(len(ds))]
    sizes = sorted({tuple(x.shape[-2:]) for x in read})
    if len(sizes) > 1:
        raise ValueError(f"{root} holds images of {len(sizes)} sizes ({sizes[:3]}...): they need a fitting")
    images = torch.stack(read)
    return TensorFolder(images=images, labels=ds.labels, paths=[p for p, _ in ds.items])
