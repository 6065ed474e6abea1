"""Detectors on the faces of a full photo: score each face crop, attack a photo through its crops, purify faces.

``crop=faces`` (docs/FACES.md) shows a detector trained on face crops what it was trained on: each face box of
``models.faces.detect_faces`` cut from the photo and brought to the detector's input size by the detector's own
``resize`` mode. The photo's verdict is that of its most fake face; a photo without a face has none.

Attacks run on the photo itself, through the crops (``models.faces.crop`` is differentiable): face ``i``'s
attack sees a copy of the photo scored on crop ``i``, and only the pixels inside box ``i`` are kept from it, so
the delivered file is the whole photo with changes inside the face boxes only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from models.data.folder import ImageFolderDataset, TensorFolder, list_images, load_image_folder, read_image
from models.detector import CLASS_NAMES, Detector
from models.faces import Box, crop, detect_faces, paste

#: The values of ``crop``: ``none`` scores the whole photo (resized inside the detector), ``faces`` each face.
CROP_MODES: tuple[str, str] = ("none", "faces")
NO_FACE = "no_face"


class NoFace(ValueError):
    """``crop=faces`` on a photo in which no face was found (an attack or a purification has nothing to work on)."""


def check_crop(value: str) -> str:
    if value not in CROP_MODES:
        raise ValueError(f"crop must be one of {list(CROP_MODES)}, got {value!r}")
    return value


def box_from_list(values: Sequence[int]) -> Box:
    """A box from its JSON form ``[x0, y0, x1, y1]`` (a queued job's, an answer's)."""
    if len(values) != 4:
        raise ValueError(f"a face box is [x0, y0, x1, y1], got {list(values)}")
    x0, y0, x1, y1 = (int(v) for v in values)
    return Box(x0, y0, x1, y1)


def face_crops(detector: Detector, image: Tensor, boxes: Sequence[Box]) -> Tensor:
    """``k x 3 x h x w``: each box of ``image`` (3 x H x W) at the detector's input size, by its ``resize`` mode."""
    return torch.stack([crop(image, b, detector.fitting) for b in boxes])


def label_of(p_fake: float | None, threshold: float = 0.5) -> str:
    if p_fake is None:
        return NO_FACE
    return "fake" if p_fake >= threshold else "real"


@dataclass(frozen=True)
class FaceVerdict:
    box: Box
    p_fake: float

    def to_json(self, threshold: float = 0.5) -> dict[str, Any]:
        return {"box": self.box.as_list(), "p_fake": self.p_fake, "label": label_of(self.p_fake, threshold)}


def most_fake(verdicts: Sequence[FaceVerdict]) -> float | None:
    """The photo's p_fake under crop=faces: its most fake face's, None without a face."""
    return max((v.p_fake for v in verdicts), default=None)


@torch.no_grad()
def score_faces(detector: Detector, image: Tensor, boxes: Sequence[Box]) -> list[FaceVerdict]:
    """p_fake of each face crop of ``image`` (on the detector's device)."""
    if not boxes:
        return []
    device = detector.get_buffer("mean").device
    p = detector.prefitted().p_fake(face_crops(detector, image.to(device), boxes)).tolist()
    return [FaceVerdict(b, float(v)) for b, v in zip(boxes, p, strict=True)]


class FaceCrops(nn.Module):
    """A photo-level model for attacks: ``k`` copies of one photo in, ``k x 2`` logits out, copy ``i`` scored on
    face ``i``'s crop. Gradients reach only the pixels inside each copy's own box."""

    def __init__(self, detector: Detector, boxes: Sequence[Box]) -> None:
        super().__init__()
        if not boxes:
            raise NoFace("no face to attack")
        self.detector = detector
        self.boxes = list(boxes)
        self.scorer = detector.prefitted()  # the crops are fitted already

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.boxes):
            raise ValueError(f"expected {len(self.boxes)} copies of the photo (one per face), got {x.shape[0]}")
        return self.scorer(torch.stack([crop(x[i], b, self.detector.fitting)
                                          for i, b in enumerate(self.boxes)]))  # fmt: skip


def merge_faces(x: Tensor, copies: Tensor, boxes: Sequence[Box]) -> Tensor:
    """The photo ``x`` (3 x H x W) with box ``i``'s pixels taken from ``copies[i]`` (later boxes win where boxes
    overlap); every pixel outside the boxes is ``x``'s own."""
    out = x.clone()
    for i, b in enumerate(boxes):
        out[:, b.y0 : b.y1, b.x0 : b.x1] = copies[i, :, b.y0 : b.y1, b.x0 : b.x1]
    return out


def inside_boxes(shape: tuple[int, int], boxes: Sequence[Box]) -> Tensor:
    """A boolean H x W mask of the pixels inside any box."""
    mask = torch.zeros(shape, dtype=torch.bool)
    for b in boxes:
        mask[b.y0 : b.y1, b.x0 : b.x1] = True
    return mask


def purify_faces(x: Tensor, boxes: Sequence[Box], purify: Callable[[Tensor], Tensor]) -> Tensor:
    """The photo with each face box replaced by ``purify(face)`` (face: 3 x h x w, the box's own pixels; the
    result is resized back to the box if it comes back at another size). Pixels outside the boxes are unchanged."""
    if not boxes:
        raise NoFace("no face to purify")
    out = x
    for b in boxes:
        out = paste(out, b, purify(x[:, b.y0 : b.y1, b.x0 : b.x1]))
    return out


def find_faces(image: Tensor) -> list[Box]:
    """``detect_faces`` with the service's settings (docs/FACES.md): dlib at upsample 1, scores above 0.5."""
    return detect_faces(image)


class CropFolder(Dataset[tuple[Tensor, int]]):
    """An ImageFolder (``root/fake``, ``root/real``) as a detector sees it, for ``train`` and ``evaluate``.

    ``crop="none"``: each image brought to the input by the detector's own ``fit`` (its resize mode).
    ``crop="faces"``: one sample per face found (at construction, once), cropped at the input size by the
    detector's resize mode, labelled as its photo; photos without a face are skipped and listed in ``no_face``.
    """

    def __init__(
        self,
        root: str | Path,
        detector: Detector,
        *,
        crop: str = "none",
        find: Callable[[Tensor], list[Box]] = find_faces,
    ) -> None:
        self.root = Path(root)
        self.detector = detector
        self.crop = check_crop(crop)
        self.items: list[tuple[Path, Box | None, int]] = []
        self.no_face: list[Path] = []
        for path, label in list_images(self.root):
            if self.crop == "none":
                self.items.append((path, None, label))
                continue
            boxes = find(read_image(path))
            if not boxes:
                self.no_face.append(path)
            self.items.extend((path, b, label) for b in boxes)
        if not self.items:
            raise ValueError(f"{self.root} holds no {'faces' if self.crop == 'faces' else 'images'} to read")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, box, label = self.items[index]
        x = read_image(path)
        with torch.no_grad():
            if box is None:
                return self.detector.fit(x[None])[0], label
            return crop(x, box, self.detector.fitting), label

    @property
    def labels(self) -> Tensor:
        return torch.tensor([label for _, _, label in self.items], dtype=torch.long)

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}


def folder_for(root: str | Path, detector: Detector, *, crop: str = "none") -> ImageFolderDataset | CropFolder:
    """What ``train`` and the evaluations read: each image read as an upload is and fitted by the detector's own
    ``fitting``, or (``crop="faces"``) each face crop. Score these through ``detector.prefitted()``."""
    if check_crop(crop) == "none":
        return ImageFolderDataset(root, fitting=detector.fitting)
    return CropFolder(root, detector, crop=crop)


def load_folder(root: str | Path, detector: Detector, *, crop: str = "none") -> TensorFolder:
    """``folder_for`` read into memory (``evaluate``'s splits, ``robustness``, ``import-detector --eval``)."""
    if check_crop(crop) == "none":
        return load_image_folder(root, fitting=detector.fitting)
    ds = CropFolder(root, detector, crop=crop)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    return TensorFolder(images=images, labels=ds.labels, paths=[p for p, _, _ in ds.items])
