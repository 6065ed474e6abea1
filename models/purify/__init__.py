"""Purification defences: Deep Image Prior (the paper's) and cheap one-shot baselines.

Every purifier has one shape, ``(x, *, progress=None, should_stop=None, **params) -> PurifyResult``,
on N x 3 x H x W images in [0, 1]; ``PURIFIERS`` maps names to them (STYLE rule 3).
"""

from __future__ import annotations

from collections.abc import Callable

from models.purify.dip import PRESETS, DipPreset, PurifyResult, dip_purify, psnr
from models.purify.simple import bitdepth_purify, jpeg_purify, median_purify
from models.purify.skipnet import SkipConfig, SkipNet
from models.purify.stopping import WindowedVariance, WMVConfig

PURIFIERS: dict[str, Callable[..., PurifyResult]] = {
    "dip": dip_purify,
    "jpeg": jpeg_purify,
    "median": median_purify,
    "bitdepth": bitdepth_purify,
}

__all__ = [
    "PRESETS",
    "PURIFIERS",
    "DipPreset",
    "PurifyResult",
    "SkipConfig",
    "SkipNet",
    "WMVConfig",
    "WindowedVariance",
    "bitdepth_purify",
    "dip_purify",
    "jpeg_purify",
    "median_purify",
    "psnr",
]
