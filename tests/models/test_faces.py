"""Face boxes on the sample photos that scikit-image and matplotlib ship (models/faces.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image
from skimage import data

from models import faces
from models.faces import Box
from models.fitting import Fitting


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div(255)


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.array(Image.open(f).convert("RGB"))
    return {
        "astronaut": _tensor(data.astronaut()),
        "grace_hopper": _tensor(hopper),
        "coffee": _tensor(data.coffee()),
        "chelsea": _tensor(data.chelsea()),
    }


# Hand-checked face centres (x, y) in the photos' own pixels.
FACE_CENTRES = {"astronaut": (222, 125), "grace_hopper": (270, 240)}


def _contains(box: Box, point: tuple[int, int]) -> bool:
    return box.x0 <= point[0] < box.x1 and box.y0 <= point[1] < box.y1


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_one_square_box_around_each_face(photos: dict[str, torch.Tensor], name: str) -> None:
    image = photos[name]
    (box,) = faces.detect_faces(image)
    assert _contains(box, FACE_CENTRES[name]) and box.width == box.height
    assert 80 <= box.width <= 300 and box.score > 1.0
    assert box.x1 <= image.shape[-1] and box.y1 <= image.shape[-2]


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_no_face_in_photos_without_one(photos: dict[str, torch.Tensor], name: str) -> None:
    assert faces.detect_faces(photos[name]) == []


def test_the_astronauts_suit_is_a_weak_detection_that_the_threshold_drops(photos: dict[str, torch.Tensor]) -> None:
    loose = faces.detect_faces(photos["astronaut"], min_score=-0.3)
    assert len(loose) >= 2 and sorted(b.score for b in loose)[-2] < 0.5


def test_a_collage_of_two_faces_gives_two_boxes_in_reading_order(photos: dict[str, torch.Tensor]) -> None:
    left = photos["astronaut"]
    right = F.interpolate(photos["grace_hopper"][None], size=(600, 512), mode="bilinear", antialias=True)[0, :, :512]
    boxes = faces.detect_faces(torch.cat([left, right], dim=2))
    assert len(boxes) == 2
    assert _contains(boxes[0], FACE_CENTRES["astronaut"]) or _contains(boxes[1], FACE_CENTRES["astronaut"])
    assert sum(b.x0 >= 512 for b in boxes) == 1  # one in each half


def test_large_photos_are_searched_scaled_down_and_boxes_mapped_back(photos: dict[str, torch.Tensor]) -> None:
    big = F.interpolate(photos["astronaut"][None], size=(1536, 1536), mode="bilinear", antialias=True)[0]
    (box,) = faces.detect_faces(big, max_side=512)
    (small,) = faces.detect_faces(photos["astronaut"])
    assert abs(box.x0 - 3 * small.x0) <= 6 and abs(box.width - 3 * small.width) <= 12


def test_enlarge_follows_faceforensics_and_clips_to_the_image() -> None:
    # side int(99 * 1.3) = 128 around the centre (149, 139)
    assert faces.enlarge(100, 100, 199, 179, 1000, 1000) == Box(85, 75, 213, 203)
    clipped = faces.enlarge(0, 0, 99, 99, 110, 1000)  # near the top-left corner of a narrow image
    assert (clipped.x0, clipped.y0) == (0, 0) and clipped.x1 <= 110 and clipped.width == clipped.height


def test_crop_and_paste_touch_only_the_box() -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 50, 80)
    box = Box(10, 5, 40, 35)
    face = faces.crop(image, box, Fitting((16, 16)))
    assert face.shape == (3, 16, 16)
    out = faces.paste(image, box, torch.rand(3, 16, 16))
    inside = torch.zeros(50, 80, dtype=torch.bool)
    inside[5:35, 10:40] = True
    assert torch.equal(out[:, ~inside], image[:, ~inside]) and not torch.equal(out[:, inside], image[:, inside])
    # the crop at the box's own size pastes back to the same pixels
    assert torch.allclose(faces.paste(image, box, faces.crop(image, box, Fitting((30, 30)))), image)
    # differentiable: a gradient through the crop reaches only the box's pixels
    x = image.clone().requires_grad_(True)
    faces.crop(x, box, Fitting((16, 16))).sum().backward()
    assert x.grad is not None and x.grad[:, ~inside].abs().sum() == 0 and x.grad[:, inside].abs().sum() > 0
    with pytest.raises(ValueError, match="does not fit"):
        faces.crop(image, Box(70, 0, 90, 20), Fitting((8, 8)))
    with pytest.raises(ValueError, match="x0 < x1"):
        Box(5, 5, 5, 9)
