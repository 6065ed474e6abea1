"""Purification defences: Deep Image Prior (the paper's) and cheap one-shot baselines.

Every purifier has one shape, ``(x, *, progress=None, should_stop=None, **params) -> PurifyResult``,
on N x 3 x H x W images in [0, 1], and is declared once in the purifier registry (``models.purify.registry``;
how to add one: docs/CONTRIBUTING.md). ``PURIFIERS`` maps names to the functions, live over the registry.
"""

from __future__ import annotations

from models.methods import FunctionView

# Each module registers its purifiers when imported, in this order, which the registry keeps (dip first).
from models.purify.dip import DIP, PRESETS, DipPreset, PurifyResult, dip_purify, psnr
from models.purify.registry import PURIFIERS_REGISTRY, PurifierSpec, get, names, register, unregister
from models.purify.simple import BITDEPTH, JPEG, MEDIAN, bitdepth_purify, jpeg_purify, median_purify
from models.purify.skipnet import SkipConfig, SkipNet
from models.purify.stopping import WindowedVariance, WMVConfig

PURIFIERS = FunctionView(PURIFIERS_REGISTRY)

__all__ = [
    "BITDEPTH",
    "DIP",
    "JPEG",
    "MEDIAN",
    "PRESETS",
    "PURIFIERS",
    "PURIFIERS_REGISTRY",
    "DipPreset",
    "PurifierSpec",
    "PurifyResult",
    "SkipConfig",
    "SkipNet",
    "WMVConfig",
    "WindowedVariance",
    "bitdepth_purify",
    "dip_purify",
    "get",
    "jpeg_purify",
    "median_purify",
    "names",
    "psnr",
    "register",
    "unregister",
]
