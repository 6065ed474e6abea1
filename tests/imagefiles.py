"""Image files for intake tests, made in memory (no downloads)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient_rgb(w: int = 40, h: int = 30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    arr = np.stack([x, y, 255 - x], axis=2).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def png_bomb_header(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose IHDR claims width x height pixels but carries almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), i * 40) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def cmyk_jpeg() -> bytes:
    return encode(gradient_rgb().convert("CMYK"), "JPEG", quality=95)


def png16_gray() -> bytes:
    arr = (np.linspace(0, 65535, 32 * 24).reshape(24, 32)).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def truncated_jpeg() -> bytes:
    data = encode(gradient_rgb(64, 64), "JPEG", quality=90)
    return data[: len(data) // 2]
