"""A bound on the decoded pixels that all requests hold at once.

An upload is decoded in full (float32, 3 channels) before a detector resizes it or an attack perturbs it, so a
131 KB PNG that declares 40 Mpx costs ~1.2 GB while its request runs; per-request limits alone let a handful of
concurrent requests exhaust the host. Each request reads its images' sizes from their headers first, then holds
that many pixels of ``capacity`` while it decodes and computes; when the pixels are not free within ``wait_s``
it gets a 503 with Retry-After instead of a place in an unbounded pile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import UploadFile
from PIL import Image
from starlette.concurrency import run_in_threadpool

from app.errors import ServiceUnavailable


class PixelGate:
    def __init__(self, capacity: int, *, wait_s: float, retry_after_s: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 pixel, got {capacity}")
        self.capacity = capacity
        self.free = capacity
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self._changed: asyncio.Condition | None = None  # made on first use, inside the server's event loop

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` (at most the whole capacity) for the block; wait up to ``wait_s`` for them."""
        want = min(max(pixels, 0), self.capacity)
        if self._changed is None:
            self._changed = asyncio.Condition()
        changed = self._changed
        async with changed:
            try:
                await asyncio.wait_for(changed.wait_for(lambda: self.free >= want), self.wait_s)
            except TimeoutError:
                raise ServiceUnavailable(
                    f"busy: other requests hold {self.capacity - self.free} of the {self.capacity} decoded pixels "
                    f"allowed at once (DFG_MAX_PIXELS_IN_FLIGHT) and this request needs {want}; retry later",
                    headers={"Retry-After": str(self.retry_after_s)},
                ) from None
            self.free -= want
        try:
            yield
        finally:
            async with changed:
                self.free += want
                changed.notify_all()


def _declared_pixels(upload: UploadFile) -> int:
    """The pixel count an upload's header declares (0 if it has none: decoding then says what is wrong)."""
    try:
        upload.file.seek(0)
        with Image.open(upload.file) as im:  # reads the header only
            w, h = im.size
        return w * h
    except Exception:  # not an image, truncated, a decompression bomb...: judged by the real decoder later
        return 0
    finally:
        upload.file.seek(0)


async def declared_pixels(uploads: list[UploadFile]) -> int:
    return sum([await run_in_threadpool(_declared_pixels, u) for u in uploads])
