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
from models.methods import Param
from models.progress import Progress, ProgressFn, StopFn, check_stop
from models.purify.differentiable import bitdepth_differentiable, jpeg_differentiable
from models.purify.dip import PurifyResult, check_images
from models.purify.registry import PurifierSpec, register


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
    quality = JPEG.check({"quality": quality})["quality"]
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
    kernel_size = MEDIAN.check({"kernel_size": kernel_size})["kernel_size"]
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
    bits = BITDEPTH.check({"bits": bits})["bits"]
    check_images(x)
    levels = float(2**bits - 1)

    def squeeze(img: Tensor) -> Tensor:
        return torch.round(img * levels) / levels

    return _per_image(x, squeeze, method="bitdepth", params={"bits": bits}, progress=progress, should_stop=should_stop)


JPEG = register(
    PurifierSpec(
        name="jpeg",
        fn=jpeg_purify,
        params=(Param("quality", int, "JPEG quality", default=75, low=1, high=95),),
        description="JPEG round trip at a quality (Guo et al. 2018)",
        bpda="approx",  # a differentiable DCT-quantisation model: far stronger than the identity (docs/ATTACKS.md)
        surrogate=jpeg_differentiable,
    )
)
MEDIAN = register(
    PurifierSpec(
        name="median",
        fn=median_purify,
        params=(Param("kernel_size", int, "median window side, odd", default=3, low=3, high=15, odd=True),),
        description="per-channel median filter (feature squeezing, Xu et al. 2018)",
        bpda="exact",  # the median routes each output's gradient to the input pixel it selected
    )
)
BITDEPTH = register(
    PurifierSpec(
        name="bitdepth",
        fn=bitdepth_purify,
        params=(Param("bits", int, "bits per channel", default=5, low=1, high=8),),
        description="bit-depth reduction per channel (feature squeezing, Xu et al. 2018)",
        surrogate=bitdepth_differentiable,
    )
)
