"""Cheap one-shot purifiers (baselines for DIP): JPEG round trip, median filter, bit-depth reduction.

Each has DIP's interface, ``(x, *, progress=None, should_stop=None, **params) -> PurifyResult``, with
its parameters validated up front. They are the classic input-transformation defences
(Guo et al. 2018; Xu et al. 2018, "feature squeezing"): fast, but an adaptive attacker can
account for them, which is why the paper turned to DIP.
"""

from __future__ import annotations

import io
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from models.images import encode_jpeg
from models.progress import Progress, ProgressFn, StopFn, check_stop
from models.purify.dip import PurifyResult, check_images


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _per_image(
    x: Tensor,
    fn: object,
    *,
    method: str,
    params: dict[str, int],
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> PurifyResult:
    started = time.perf_counter()
    out = []
    for i in range(x.shape[0]):
        check_stop(should_stop, i)
        out.append(fn(x[i : i + 1]))  # type: ignore[operator]
        if progress is not None:
            progress(Progress(iteration=i + 1, max_iterations=x.shape[0], loss=0.0, stage=method))
    return PurifyResult(
        image=torch.cat(out).clamp(0, 1).to(x.dtype),
        method=method,
        iterations=(0,) * x.shape[0],
        steps=0,
        stopped_by="one-shot",
        seconds=time.perf_counter() - started,
        params=dict(params),
    )


def jpeg_purify(
    x: Tensor,
    *,
    quality: int = 75,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PurifyResult:
    """Encode each image as JPEG at ``quality`` (1..95) and decode it again (8-bit, via PIL)."""
    if not _is_int(quality) or not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be an integer in 1..95, got {quality!r}")
    check_images(x)

    def round_trip(img: Tensor) -> Tensor:
        with Image.open(io.BytesIO(encode_jpeg(img[0], quality=quality))) as im:
            data = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
            w, h = im.size
        return (data.view(h, w, 3).permute(2, 0, 1).float() / 255.0).unsqueeze(0).to(img.device)

    return _per_image(
        x, round_trip, method="jpeg", params={"quality": quality}, progress=progress, should_stop=should_stop
    )


def median_purify(
    x: Tensor,
    *,
    kernel_size: int = 3,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PurifyResult:
    """Per-channel median over a ``kernel_size`` x ``kernel_size`` window (odd, >= 3), reflect-padded."""
    if not _is_int(kernel_size) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"median kernel_size must be an odd integer >= 3, got {kernel_size!r}")
    check_images(x)
    pad = kernel_size // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(f"median kernel_size {kernel_size} is too large for an image of {tuple(x.shape[-2:])}")

    def median(img: Tensor) -> Tensor:
        n, c, h, w = img.shape
        padded = F.pad(img, (pad, pad, pad, pad), mode="reflect")
        patches = F.unfold(padded.reshape(n * c, 1, h + 2 * pad, w + 2 * pad), kernel_size)
        return patches.median(dim=1).values.reshape(n, c, h, w)

    return _per_image(
        x, median, method="median", params={"kernel_size": kernel_size}, progress=progress, should_stop=should_stop
    )


def bitdepth_purify(
    x: Tensor,
    *,
    bits: int = 5,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PurifyResult:
    """Quantise every channel to ``bits`` bits (1..8): ``round(x * (2^bits - 1)) / (2^bits - 1)``."""
    if not _is_int(bits) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    check_images(x)
    levels = float(2**bits - 1)

    def squeeze(img: Tensor) -> Tensor:
        return torch.round(img * levels) / levels

    return _per_image(x, squeeze, method="bitdepth", params={"bits": bits}, progress=progress, should_stop=should_stop)
