"""Faces in full photos: dlib's HOG frontal detector, boxes as FaceForensics++ crops them.

The field's detectors (FaceForensics++, DeepfakeBench) are trained on face crops made this way: dlib's
frontal face detector on the frame, its box grown to a square 1.3 times its longer side around the same
centre, clipped to the image. Serving them on such crops shows them what they were trained on. The HOG
detector's model is compiled into the ``dlib-bin`` wheel (4 MB, no dependencies): nothing is downloaded.
docs/FACES.md has the comparison with OpenCV's Haar cascade on the sample photos and the timings.

``crop`` and ``paste`` are differentiable tensor operations, so an attack or a purifier can work on a face
at the detector's resolution while the pixels it changes are the photo's own, inside the box only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.detector import fit_image
from models.fitting import Fitting

#: FaceForensics++'s ``get_boundingbox`` scale: the square crop's side over the detector box's longer side.
SCALE = 1.3


@dataclass(frozen=True)
class Box:
    """A face box in image pixels: columns ``x0 <= x < x1``, rows ``y0 <= y < y1``; ``score`` from dlib."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.x0 < self.x1 and 0 <= self.y0 < self.y1):
            raise ValueError(f"a box needs 0 <= x0 < x1 and 0 <= y0 < y1, got {self.as_list()}")

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


def enlarge(left: int, top: int, right: int, bottom: int, width: int, height: int, scale: float = SCALE) -> Box:
    """FaceForensics++'s crop of a detector box (inclusive corners): a square ``scale`` times the box's
    longer side around its centre, its top-left corner clipped to the image, its side cut to fit."""
    side = int(max(right - left, bottom - top) * scale)
    cx, cy = (left + right) // 2, (top + bottom) // 2
    x0, y0 = max(int(cx - side // 2), 0), max(int(cy - side // 2), 0)
    side = min(width - x0, height - y0, side)
    return Box(x0, y0, x0 + side, y0 + side)


@functools.cache
def _detector() -> Any:
    # Built once per process, on first use (never at import); dlib's detector is read-only once built.
    import dlib

    return dlib.get_frontal_face_detector()


def _uint8_hwc(image: Tensor) -> Any:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image 3 x H x W in [0, 1], got shape {tuple(image.shape)}")
    pixels = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return pixels.cpu().numpy()  # C-contiguous rows of RGB pixels: the layout dlib's image view expects


def detect_faces(
    image: Tensor, *, upsample: int = 1, min_score: float = 0.5, max_side: int = 1024, scale: float = SCALE
) -> list[Box]:
    """Face boxes in ``image`` (3 x H x W in [0, 1]), enlarged as FaceForensics++ crops, in reading order.

    ``upsample`` is dlib's (1, as FaceForensics++ runs it: faces down to about 40 px of the detection
    copy). Photos larger than ``max_side`` are searched on a copy scaled to fit it (the cost grows with the
    pixels), boxes mapped back. ``min_score`` keeps detections dlib scores above it: 0.5 drops the weak
    detection (-0.2 to 0.1) dlib makes on the astronaut's suit, where faces score above 1 (docs/FACES.md).
    """
    if upsample < 0 or max_side < 16 or not scale >= 1.0:
        raise ValueError(f"need upsample >= 0, max_side >= 16, scale >= 1; got {upsample}, {max_side}, {scale}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    factor = min(1.0, max_side / max(height, width))
    work = image
    if factor < 1.0:
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        work = F.interpolate(image[None].detach().float(), size=size, mode="bilinear", antialias=True)[0]
    rects, scores, _ = _detector().run(_uint8_hwc(work), upsample, min_score)
    boxes = []
    for r, s in zip(rects, scores, strict=True):
        if s <= min_score:  # dlib's adjust_threshold keeps scores >= it; a tie is not above
            continue
        left, top, right, bottom = (round(v / factor) for v in (r.left(), r.top(), r.right(), r.bottom()))
        box = enlarge(max(left, 0), max(top, 0), min(right, width - 1), min(bottom, height - 1), width, height, scale)
        boxes.append(Box(box.x0, box.y0, box.x1, box.y1, score=float(s)))
    return sorted(boxes, key=lambda b: (b.y0, b.x0))


def _check(image: Tensor, box: Box) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image 3 x H x W, got shape {tuple(image.shape)}")
    if box.x1 > image.shape[-1] or box.y1 > image.shape[-2]:
        raise ValueError(f"box {box.as_list()} does not fit an image of {image.shape[-1]} x {image.shape[-2]}")


def crop(image: Tensor, box: Box, fitting: Fitting) -> Tensor:
    """The box's pixels brought to a detector's input by its ``fitting`` (models/fitting.py; differentiable)."""
    _check(image, box)
    region = image[:, box.y0 : box.y1, box.x0 : box.x1]
    return fitting.apply(region[None])[0]


def paste(image: Tensor, box: Box, face: Tensor) -> Tensor:
    """A copy of ``image`` whose box holds ``face`` resized to the box (bilinear, antialiased), clamped to
    [0, 1]; every pixel outside the box is the input's own. Differentiable in ``face``."""
    _check(image, box)
    if face.dim() != 3 or face.shape[0] != 3:
        raise ValueError(f"expected a face 3 x h x w, got shape {tuple(face.shape)}")
    region = fit_image(face[None], (box.height, box.width), "resize")[0].clamp(0, 1)
    out = image.clone()
    out[:, box.y0 : box.y1, box.x0 : box.x1] = region
    return out
