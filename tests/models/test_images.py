from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.images import (
    EmptyImage,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    UnsupportedImage,
    decode_image,
    encode_jpeg,
    encode_png,
    quantize_8bit,
)
from tests import imagefiles as files


def test_png_roundtrip_is_exact_for_8bit_values() -> None:
    x = quantize_8bit(torch.rand(3, 17, 23))
    y = decode_image(encode_png(x))
    assert y.dtype == torch.float32 and y.shape == (3, 17, 23)
    assert torch.equal(x, y)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_accepted_formats_decode_to_rgb_in_unit_range(fmt: str) -> None:
    x = decode_image(files.encode(files.gradient_rgb(), fmt))
    assert x.shape == (3, 30, 40)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x[0, :, -1].mean()) > 0.8  # red grows left to right


def test_text_file_is_invalid() -> None:
    with pytest.raises(InvalidImage, match="not a recognisable image"):
        decode_image(b"hello, this is plainly text\n" * 10)


def test_zero_bytes_is_empty() -> None:
    with pytest.raises(EmptyImage, match="0 bytes"):
        decode_image(b"")


def test_truncated_jpeg_is_invalid() -> None:
    with pytest.raises(InvalidImage, match=r"truncated|corrupt"):
        decode_image(files.truncated_jpeg())


def test_pixel_bomb_is_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLarge, match=r"50000 x 50000|pixel limit"):
        decode_image(files.png_bomb_header(), max_pixels=40_000_000)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = files.encode(files.gradient_rgb(100, 100), "PNG")
    with pytest.raises(ImageTooLarge, match="10000 pixels; the limit is 9999"):
        decode_image(data, max_pixels=9_999)


def test_byte_limit() -> None:
    data = files.encode(files.gradient_rgb(), "PNG")
    with pytest.raises(ImageTooLarge, match="bytes"):
        decode_image(data, max_bytes=len(data) - 1)


def test_animated_gif_is_unsupported() -> None:
    with pytest.raises(UnsupportedImage, match="GIF"):
        decode_image(files.animated_gif())


def test_animated_webp_is_unsupported() -> None:
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    data = files.encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(UnsupportedImage, match="animated WEBP with 3 frames"):
        decode_image(data)


def test_cmyk_jpeg_becomes_rgb() -> None:
    x = decode_image(files.cmyk_jpeg())
    ref = decode_image(files.encode(files.gradient_rgb(), "PNG"))
    assert x.shape == ref.shape
    assert float((x - ref).abs().mean()) < 0.05


def test_16bit_png_keeps_its_range() -> None:
    x = decode_image(files.png16_gray())
    assert x.shape == (3, 24, 32)
    assert float(x.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(x.max()) == pytest.approx(1.0, abs=1e-6)
    # 16-bit precision survives: many more than 256 distinct levels
    assert torch.unique(x[0]).numel() > 256


def test_palette_with_transparency_is_composited_on_white() -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    im.info["transparency"] = 0
    im.putpixel((5, 5), 1)
    x = decode_image(files.encode(im, "PNG", transparency=0))
    assert torch.allclose(x[:, 0, 0], torch.ones(3))  # transparent -> white
    assert torch.allclose(x[:, 5, 5], torch.tensor([1.0, 0.0, 0.0]))


def test_rgba_alpha_is_composited_and_grayscale_is_expanded() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    assert torch.allclose(decode_image(files.encode(rgba, "PNG")), torch.ones(3, 4, 4))
    gray = Image.fromarray(np.full((5, 6), 128, np.uint8), mode="L")
    x = decode_image(files.encode(gray, "PNG"))
    assert x.shape == (3, 5, 6) and torch.allclose(x, torch.full_like(x, 128 / 255))


def test_exif_orientation_is_applied() -> None:
    im = files.gradient_rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    x = decode_image(files.encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert x.shape == (3, 40, 30)


def test_jpeg_quality_is_validated() -> None:
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(torch.rand(3, 8, 8), quality=0)


def test_min_side_is_checked_from_the_header() -> None:
    one = files.encode(files.gradient_rgb(1, 1), "PNG")
    assert decode_image(one).shape == (3, 1, 1)  # the default (CLI, library) takes any size
    with pytest.raises(ImageTooSmall, match="1 x 1 pixels; each side must be at least 16"):
        decode_image(one, min_side=16)
    assert decode_image(files.encode(files.gradient_rgb(16, 40), "PNG"), min_side=16).shape == (3, 40, 16)
