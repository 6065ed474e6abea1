"""Laundering: what happens to an image between its maker and a deployed detector with no attacker at all (re-encoding,
resizing, blur, noise, the resize-and-JPEG of a sharing site), and its differentiable stand-ins for attacks that must
survive it (docs/AUDIT.md, "Laundering").

Every function takes one image 3 x H x W in [0, 1] at its own size and returns the laundered file's pixels (8-bit, as
a file holds them), at the input's size unless the transform is a resize that the file keeps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from models.images import decode_image, encode_jpeg, quantize_8bit


def jpeg(x: Tensor, quality: int) -> Tensor:
    """Saved as JPEG at ``quality`` (PIL, 4:2:0 as libjpeg's default) and read back."""
    data = encode_jpeg(x.detach().float().cpu(), quality=quality)
    return decode_image(data, max_bytes=len(data), max_pixels=x.shape[-1] * x.shape[-2]).to(x.device)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)


def rescale(x: Tensor, factor: float) -> Tensor:
    """Downscaled by ``factor`` and brought back up to the original size (a thumbnail blown up again)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    small = _resize(x, (max(1, round(h * factor)), max(1, round(w * factor))))
    return quantize_8bit(_resize(small, (h, w)))


def blur(x: Tensor, sigma: float) -> Tensor:
    """A Gaussian blur of standard deviation ``sigma`` pixels (kernel 2 * ceil(3 sigma) + 1)."""
    size = 2 * math.ceil(3 * sigma) + 1
    return quantize_8bit(TF.gaussian_blur(x[None], kernel_size=[size, size], sigma=[sigma, sigma])[0])


def noise(x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """Gaussian noise of standard deviation ``sigma`` (pixel units), from ``generator`` (seeded per image)."""
    n = torch.randn(x.shape, generator=generator).to(x.device)
    return quantize_8bit((x + sigma * n).clamp(0, 1))


def shared_online(x: Tensor, factor: float, quality: int) -> Tensor:
    """What a sharing site does: downscaled by ``factor`` (kept small) and re-encoded as JPEG at ``quality``."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    return jpeg(_resize(x, (max(16, round(h * factor)), max(16, round(w * factor)))), quality)


class LaunderingEOT(nn.Module):
    """``model`` seen through random launderings, averaged (expectation over transformation, Athalye et al. 2018): each
    forward pass draws ``samples`` (scale, JPEG quality) pairs; the resize is differentiable, the JPEG passes its
    gradient straight through (BPDA with the identity: docs/ATTACKS.md). An attack crafted on this module aims at a
    file that survives re-encoding; it is judged after a laundering it did not draw."""

    def __init__(
        self,
        model: nn.Module,
        *,
        samples: int,
        generator: torch.Generator,
        scales: tuple[float, float] = (0.5, 1.0),
        qualities: tuple[int, int] = (50, 95),
    ) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self.model = model
        self.samples = samples
        self.generator = generator
        self.scales = scales
        self.qualities = qualities

    def _draw(self, x: Tensor) -> Tensor:
        lo, hi = self.scales
        scale = lo + (hi - lo) * float(torch.rand((), generator=self.generator))
        quality = int(torch.randint(self.qualities[0], self.qualities[1] + 1, (), generator=self.generator))
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = (max(8, round(h * scale)), max(8, round(w * scale)))
        small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        encoded = torch.stack([jpeg(im, quality) for im in back.detach()])
        return back + (encoded - back).detach()

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(self._draw(x)) for _ in range(self.samples)]).mean(dim=0)
