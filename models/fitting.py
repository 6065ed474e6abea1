"""How an image of any size is brought to a detector's input: the one fitter every path uses.

The API, the CLI, the workers, training and every evaluation call ``Fitting.apply`` (through ``Detector.fit``), so
the same file gives the same p_fake everywhere (docs/IMPORTING.md, "How an image reaches your detector").

Modes (``FIT_MODES``):

- ``resize``: the whole image to the input size; the aspect ratio is not kept.
- ``center-crop``: scale so the image covers the input size, then cut its centre (aspect kept, nothing upscaled
  more than needed).
- ``short-side-crop``: torchvision's and timm's evaluation transform, ``Resize(S)`` then ``CenterCrop(C)``: the
  shorter side to ``short_side`` (S; the longer one in proportion, truncated as torchvision truncates it), then the
  centre ``input_size`` (C) cut out. timm writes S as ``C / crop_pct`` (``crop_pct`` 0.875: 224 -> 256).

All modes resample on float pixels with ``interpolation`` (bilinear or bicubic) and ``antialias``, as torchvision's
``Resize`` does on a float tensor, and are differentiable, so attacks see the same pixels the verdict was made on.
Bicubic resampling overshoots [0, 1] near edges; its result is clamped to [0, 1], as PIL's resize and torchvision's
uint8 path clamp it (the usual timm and torchvision eval pipelines resize 8-bit images), and so that a fitted image is
still an image an attack's eps-ball can hold. Bilinear never overshoots: it equals torchvision's float path exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from models.images import ImageError

FIT_MODES: tuple[str, ...] = ("resize", "center-crop", "short-side-crop")
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic")
#: ``short-side-crop`` scales the longer side in proportion: a 16 x 100,000 strip would become a ~1.6 Gpx
#: intermediate. Images longer than this many times their shorter side are refused for that mode.
MAX_ASPECT = 64


class FittingError(ImageError):
    """An image this fitting cannot bring to the detector's input (a strip too long for ``short-side-crop``): an image
    the service refuses (422), as it refuses other images it cannot take."""


@dataclass(frozen=True)
class Fitting:
    """Bring N x 3 x H x W pixels to ``size`` (H, W) by ``mode``; see the module's docstring."""

    size: tuple[int, int]
    mode: str = "resize"
    short_side: int | None = None
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.mode not in FIT_MODES:
            raise ValueError(f"resize must be one of {list(FIT_MODES)}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")
        if not isinstance(self.antialias, bool):
            raise ValueError(f"antialias must be true or false, got {self.antialias!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"input_size must be two positive sides, got {tuple(self.size)}")
        if self.mode == "short-side-crop":
            s = self.short_side
            if isinstance(s, bool) or not isinstance(s, int) or s < max(self.size):
                raise ValueError(
                    f"short-side-crop needs resize_short (the shorter side before the crop) of at least the input "
                    f"size's longer side {max(self.size)}, got {s!r}"
                )
        elif self.short_side is not None:
            raise ValueError(f"resize_short applies only to resize=short-side-crop, not {self.mode!r}")

    def describe(self) -> dict[str, Any]:
        """The fitting as ``GET /models`` and every evaluation record show it."""
        out: dict[str, Any] = {"resize": self.mode, "input_size": list(self.size)}
        if self.short_side is not None:
            out["resize_short"] = self.short_side
        return {**out, "interpolation": self.interpolation, "antialias": self.antialias}

    def _resample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x  # torchvision returns the image itself when the size does not change
        out = F.interpolate(x, size=size, mode=self.interpolation, align_corners=False, antialias=self.antialias)
        return out.clamp(0, 1) if self.interpolation == "bicubic" else out

    def apply(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
        th, tw = self.size
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self.mode == "resize":
            return self._resample(x, (th, tw))
        if self.mode == "center-crop":
            if (h, w) == (th, tw):
                return x
            scale = max(th / h, tw / w)
            sh, sw = max(th, round(h * scale)), max(tw, round(w * scale))
            x = self._resample(x, (sh, sw))
        else:
            if max(h, w) > MAX_ASPECT * min(h, w):
                raise FittingError(
                    f"the image is {w} x {h} pixels, more than {MAX_ASPECT} times longer than wide; this detector "
                    f"resizes the shorter side to {self.short_side} (resize=short-side-crop) and cannot take it"
                )
            sh, sw = short_side_size(h, w, self.short_side or 0)
            x = self._resample(x, (sh, sw))
        # torchvision's CenterCrop: offsets rounded half to even, as Python's round().
        top, left = round((sh - th) / 2.0), round((sw - tw) / 2.0)
        return x[..., top : top + th, left : left + tw]


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(H, W) after torchvision's ``Resize(short)``: the shorter side to ``short``, the longer one truncated."""
    if w <= h:
        return int(short * h / w), short
    return short, int(short * w / h)


def short_side_for_crop_pct(input_size: tuple[int, int], crop_pct: float) -> int:
    """timm's ``crop_pct`` as the ``short-side-crop`` side: ``floor(max(input_size) / crop_pct)``, as timm computes
    its eval ``Resize`` for a square input."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    return int(max(input_size) / crop_pct)
