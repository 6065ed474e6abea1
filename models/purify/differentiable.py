"""Differentiable stand-ins for the one-shot purifiers whose real forward pass has no useful gradient (rounding):
the backward pass of an adaptive attack through them (BPDA with a differentiable approximation,
models/attacks/adaptive.py; docs/ATTACKS.md, "Adaptive attacks").

``jpeg_differentiable`` follows what PIL's ``save(format="JPEG", quality=q)`` asks of libjpeg with its defaults:
RGB -> YCbCr (JFIF), chroma subsampled 4:2:0 (2 x 2 box average), the image padded to whole 16 x 16 MCUs by
repeating its last row and column, 8 x 8 DCT of the samples minus 128, quantisation by the IJG tables (the JPEG
standard's Annex K tables scaled for ``q`` as ``jpeg_set_quality`` does, baseline: 1..255), then the decoder's
inverse: dequantisation, inverse DCT, "fancy" (triangular) chroma upsampling, YCbCr -> RGB, rounding and clipping
to 8 bits. Every rounding keeps its exact value; the gradient of the quantisation rounding is that of Shin & Song's
cubic approximation (2017, "JPEG-resistant adversarial images"), ``d/dx [r + (x - r)^3] = 3 (x - r)^2`` with
``r = round(x)``: a DCT coefficient far from a rounding boundary (the high frequencies that quantise to zero) passes
almost no gradient, one near a boundary passes most. The pixel-level roundings pass the gradient unchanged
(straight-through). libjpeg's integer DCT and fixed-point colour arithmetic are not copied, so the values differ from
PIL's by a little (docs/ATTACKS.md gives the PSNR); only the gradient is used, the forward pass stays PIL's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: The JPEG standard's example quantisation tables (ITU-T T.81 Annex K.1), natural (row-major) order.
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)

_RGB_TO_YCC = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_YCC_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136286, -0.714136286),
    (1.0, 1.772, 0.0),
)


def quant_table(base: tuple[tuple[int, ...], ...], quality: int) -> Tensor:
    """``base`` scaled for ``quality`` (1..100) as libjpeg's ``jpeg_set_quality(q, force_baseline=TRUE)``."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    table = (torch.tensor(base, dtype=torch.float64) * scale + 50) // 100
    return table.clamp(1, 255).float()


def _dct_matrix() -> Tensor:
    """The orthonormal 8-point DCT-II (JPEG's FDCT is ``D f D^T`` on each 8 x 8 block)."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.float()


_DCT = _dct_matrix()


def straight_round(x: Tensor) -> Tensor:
    """``round(x)`` in value, the identity in gradient."""
    return x + (torch.round(x) - x).detach()


def cubic_round(x: Tensor) -> Tensor:
    """``round(x)`` in value, the gradient of Shin & Song's ``r + (x - r)^3``: ``3 (x - r)^2``."""
    cubic = (x - torch.round(x).detach()) ** 3
    return torch.round(x).detach() + (cubic - cubic.detach())


def _blocks(plane: Tensor) -> Tensor:
    """N x H x W (multiples of 8) -> N x (H/8) x (W/8) x 8 x 8."""
    n, h, w = plane.shape
    return plane.reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(blocks: Tensor) -> Tensor:
    n, bh, bw = blocks.shape[:3]
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8)


def _code_plane(plane: Tensor, table: Tensor) -> Tensor:
    """One component's samples (0..255) through DCT, quantisation, dequantisation and inverse DCT."""
    d = _DCT.to(plane)
    q = table.to(plane)
    coeffs = d @ (_blocks(plane) - 128) @ d.T
    restored = d.T @ (cubic_round(coeffs / q) * q) @ d
    return straight_round(_unblocks(restored) + 128).clamp(0, 255)


def jpeg_differentiable(x: Tensor, *, quality: int = 75) -> Tensor:
    """A differentiable JPEG round trip of N x 3 x H x W images in [0, 1] at ``quality`` (the module's docstring)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = -h % 16, -w % 16
    rgb = F.pad(straight_round(x.clamp(0, 1) * 255), (0, pw, 0, ph), mode="replicate")
    shift = torch.tensor([0.0, 128.0, 128.0]).to(rgb)[None, :, None, None]  # the chroma's offset
    ycc = straight_round(torch.einsum("ij,njhw->nihw", torch.tensor(_RGB_TO_YCC).to(rgb), rgb) + shift).clamp(0, 255)
    luma = _code_plane(ycc[:, 0], quant_table(LUMA_TABLE, quality))
    chroma = straight_round(F.avg_pool2d(ycc[:, 1:], 2))
    table = quant_table(CHROMA_TABLE, quality)
    coded = torch.stack([_code_plane(chroma[:, c], table) for c in range(2)], dim=1)
    up = F.interpolate(coded, scale_factor=2, mode="bilinear", align_corners=False)  # libjpeg's fancy upsampling
    ycc_out = torch.cat([luma[:, None], straight_round(up)], dim=1) - shift
    out = torch.einsum("ij,njhw->nihw", torch.tensor(_YCC_TO_RGB).to(rgb), ycc_out)
    return (straight_round(out).clamp(0, 255) / 255)[:, :, :h, :w].to(x.dtype)


def bitdepth_differentiable(x: Tensor, *, bits: int = 5) -> Tensor:
    """Bit-depth reduction to ``bits`` bits with the cubic rounding's gradient (``round`` in value)."""
    levels = float(2**bits - 1)
    return cubic_round(x.clamp(0, 1) * levels) / levels
