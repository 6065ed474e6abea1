"""Reading multipart uploads with byte limits, and decoding them under the pixel limit."""

from __future__ import annotations

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.settings import Settings
from models.images import ImageTooLarge, decode_image


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    """The upload's bytes; refuses more than ``max_upload_bytes`` without reading the rest."""
    data = await upload.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        name = upload.filename or "upload"
        raise ImageTooLarge(f"{name} is larger than the limit of {settings.max_upload_bytes} bytes")
    return data


async def decode(data: bytes, settings: Settings) -> Tensor:
    return await run_in_threadpool(
        decode_image, data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels
    )


async def read_image(upload: UploadFile, settings: Settings) -> tuple[bytes, Tensor]:
    data = await read_upload(upload, settings)
    try:
        return data, await decode(data, settings)
    except ImageTooLarge:
        raise
    except ValueError as exc:
        # Name the file in the message: a request may carry several.
        raise type(exc)(f"{upload.filename or 'upload'}: {exc}") from exc
