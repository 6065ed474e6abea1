"""crop=faces in the routes: the upload's face boxes, found once per request off the event loop (docs/FACES.md)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.errors import InvalidParameter
from models.facecrop import find_faces


async def faces_of(x: Tensor, crop: str, filename: str | None) -> tuple[tuple[int, int, int, int], ...]:
    """The face boxes of an upload for crop=faces (found once, in the threadpool: dlib takes ~0.36 s a 1024 px
    photo); a photo without a face is refused, since there is nothing to attack or purify."""
    if crop != "faces":
        return ()
    boxes = await run_in_threadpool(find_faces, x)
    if not boxes:
        raise InvalidParameter(f"crop=faces: no face was found in {filename or 'the upload'}")
    return tuple((b.x0, b.y0, b.x1, b.y1) for b in boxes)
