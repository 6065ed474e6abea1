"""Image intake and output: bytes <-> float32 3 x H x W tensors in [0, 1].

Intake checks the byte size and the pixel count from the header before decoding the pixels,
so decompression bombs are refused cheaply. Every failure is an ``ImageError`` subclass that
names the problem; the API maps them to 4xx answers.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "MPO": "image/jpeg",
}


class ImageError(ValueError):
    """Base class for images that cannot be accepted."""


class EmptyImage(ImageError):
    pass


class ImageTooLarge(ImageError):
    """Too many bytes or too many pixels."""


class ImageTooSmall(ImageError):
    """Fewer pixels on a side than a verdict can mean anything on (a 1 x 1 "image")."""


class UnsupportedImage(ImageError):
    """A readable image in a format or shape we do not accept (GIF, TIFF, animation)."""


class InvalidImage(ImageError):
    """Not an image at all, or a corrupt / truncated one."""


def _check_header(im: Image.Image, *, max_pixels: int, min_side: int) -> None:
    fmt = im.format or "unknown"
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImage(f"unsupported image format {fmt}; send JPEG, PNG, WebP or BMP")
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames > 1 and fmt != "MPO":
        raise UnsupportedImage(f"animated {fmt} with {frames} frames is not supported; send a still image")
    w, h = im.size
    if w < 1 or h < 1:
        raise InvalidImage(f"image has no pixels ({w} x {h})")
    if w * h > max_pixels:
        raise ImageTooLarge(f"image is {w} x {h} = {w * h} pixels; the limit is {max_pixels} pixels")
    if min(w, h) < min_side:
        raise ImageTooSmall(f"image is {w} x {h} pixels; each side must be at least {min_side} pixels")


#: Start-of-frame markers of Huffman-coded JPEG (baseline, extended, progressive): each 8 x 8 block of the first
#: component costs at least one bit (its DC code), so such a file has at least a byte per 64 blocks.
_HUFFMAN_SOF = (0xC0, 0xC1, 0xC2)
_NOT_SOF = (0xC4, 0xC8, 0xCC)  # DHT, JPG, DAC share the 0xC_ range


def _check_jpeg_size(data: bytes, width: int, height: int) -> None:
    """Refuse a JPEG whose header claims far more pixels than its bytes can hold, before decoding it: libjpeg fills a
    scan that ends early with grey, so 1 KB claiming 6000 x 6000 decoded as 36 Mpx for seconds (README, "Bad input").
    Walks the segments from SOI to the first start-of-frame marker (an EXIF thumbnail's lies inside APP1)."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF:
            if marker in _HUFFMAN_SOF:
                least = -(-width // 8) * -(-height // 8) // 8
                if len(data) < least:
                    raise InvalidImage(
                        f"the JPEG is {len(data)} bytes but its header declares {width} x {height} pixels, which need "
                        f"at least {least} bytes: it is truncated or its header is wrong"
                    )
            return
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def _to_array(im: Image.Image) -> np.ndarray:
    """Pixels as float32 H x W x 3 in [0, 1] from any PIL mode (16-bit, CMYK, palette, alpha...)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        gray = np.clip(arr / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # Transparent pixels carry arbitrary colours: composite onto white, as a viewer shows them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    rgb = im.convert("RGB")
    return np.asarray(rgb, dtype=np.float32) / 255.0


def decode_image(data: bytes, *, max_bytes: int = 20 << 20, max_pixels: int = 40_000_000, min_side: int = 1) -> Tensor:
    """Decode an uploaded image to a float32 3 x H x W tensor in [0, 1].

    The header is checked before any pixel is decoded: format, frames, ``max_pixels`` and ``min_side``.
    """
    if len(data) == 0:
        raise EmptyImage("the upload is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the upload is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            _check_header(im, max_pixels=max_pixels, min_side=min_side)
            if im.format in ("JPEG", "MPO"):
                _check_jpeg_size(data, *im.size)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses the header before we can read its size; its own limit is not ours, so it is not quoted.
        raise ImageTooLarge(f"image exceeds the pixel limit of {max_pixels} pixels") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImage("the upload is not a recognisable image (JPEG, PNG, WebP or BMP)") from exc
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"the image is corrupt or truncated ({exc})") from exc
    # A malformed EXIF block is not a reason to refuse the pixels.
    upright: Image.Image = im
    with contextlib.suppress(OSError, ValueError, SyntaxError):
        upright = ImageOps.exif_transpose(im)
    arr = _to_array(upright)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def load_image_file(path: str | Path, *, max_pixels: int = 400_000_000) -> Tensor:
    """Read an image file from disk (CLI use): same decoding rules as the API."""
    data = Path(path).read_bytes()
    return decode_image(data, max_bytes=max(len(data), 1), max_pixels=max_pixels)


def quantize_8bit(x: Tensor) -> Tensor:
    """Round to the 256 levels an 8-bit file can hold (what a user receives)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def psnr(a: Tensor, b: Tensor, *, min_mse: float = 0.0) -> Tensor:
    """Per-image PSNR in dB for [0, 1] pixels (peak 1): inf where identical, unless ``min_mse`` caps it."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(min_mse))


def to_pil(x: Tensor) -> Image.Image:
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W tensor, got shape {tuple(x.shape)}")
    arr = torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


def encode_png(x: Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(x).save(buf, format="PNG")
    return buf.getvalue()


def encode_jpeg(x: Tensor, quality: int = 75) -> bytes:
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be in 1..95, got {quality}")
    buf = io.BytesIO()
    to_pil(x).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def save_png(x: Tensor, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(encode_png(x))
