"""Reading multipart uploads with byte limits, and decoding them under the pixel limits."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request, UploadFile
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.errors import InvalidParameter
from core.settings import Settings
from models.images import ImageError, ImageTooLarge, decode_image


def _name(upload: UploadFile) -> str:
    return upload.filename or "upload"


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """The upload's bytes; refuses more than ``max_upload_bytes`` without reading the rest."""
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ImageTooLarge(f"{_name(upload)} is larger than the limit of {settings.max_upload_bytes} bytes")
    return data


async def _decode(upload: UploadFile, data: bytes, settings: Settings, max_pixels: int) -> Tensor:
    try:
        return await run_in_threadpool(
            decode_image,
            data,
            max_bytes=settings.max_upload_bytes,
            max_pixels=max_pixels,
            min_side=settings.min_image_side,
        )
    except ImageError as exc:
        # Name the file in the message: a request may carry several.
        raise type(exc)(f"{_name(upload)}: {exc}") from exc


async def read_image(upload: UploadFile, settings: Settings) -> tuple[bytes, Tensor]:
    data = await read_upload(upload, settings)
    return data, await _decode(upload, data, settings, settings.max_pixels)


async def read_images(uploads: list[UploadFile], settings: Settings) -> list[Tensor]:
    """Decode a request's images, which together may hold at most ``max_pixels`` pixels.

    Each image is decoded in full before the detector resizes it, so without a budget for the whole request
    32 images at the per-image limit would need tens of GB. Each header is checked against what is left
    of the budget before its pixels are decoded.
    """
    left = settings.max_pixels
    images = []
    for upload in uploads:
        data = await read_upload(upload, settings)
        try:
            x = await _decode(upload, data, settings, left)
        except ImageTooLarge as exc:
            if left == settings.max_pixels:
                raise
            raise ImageTooLarge(
                f"{exc}; the images of one request may hold {settings.max_pixels} pixels in all and the files "
                f"before {_name(upload)} hold {settings.max_pixels - left}"
            ) from exc
        left -= x.shape[1] * x.shape[2]
        images.append(x)
    return images


def form_fields(names: frozenset[str], *, repeatable: frozenset[str] = frozenset()) -> Callable[..., Any]:
    """A dependency refusing form fields a route does not take, and repeats of those it takes once.

    FastAPI ignores both: a misspelt ``kernelsize`` would quietly run with the default, and of two ``method``
    values the last would win. ``names`` must list the route's form fields (tests/app/test_api.py checks
    them against the OpenAPI document).
    """

    async def check(request: Request) -> None:
        form = await request.form()
        unknown = sorted(set(form.keys()) - names)
        if unknown:
            raise InvalidParameter(f"unknown form field(s) {unknown}; this endpoint takes {sorted(names)}")
        for name in sorted(set(form.keys()) - repeatable):
            count = len(form.getlist(name))
            if count > 1 and name == "file":
                raise InvalidParameter(f"{count} files sent; this endpoint takes exactly one image in the field 'file'")
            if count > 1:
                raise InvalidParameter(f"the field {name!r} was sent {count} times; send it once")

    return check
