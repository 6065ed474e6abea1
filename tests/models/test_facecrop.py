"""Folders of full photos for train and evaluate (models/facecrop.py), and the sweep keeping a base's semantics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from PIL import Image
from skimage import data

from deepfake_guard import cli
from models import checkpoint, registry
from models.detector import fit_image
from models.evaluation.clean import Member
from models.evaluation.config import EvalConfig
from models.evaluation.sweep import sweep
from models.facecrop import CropFolder, folder_for, load_folder
from models.faces import crop as crop_box
from models.fitting import Fitting


def _save(pixels: np.ndarray, path: Path, side: int = 256) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((side, side), Image.Resampling.LANCZOS).save(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val/test, each with a face photo per class and one photo without a face (coffee) among the reals."""
    root = tmp_path_factory.mktemp("photos")
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.array(Image.open(f).convert("RGB"))
    for split in ("train", "val", "test"):
        _save(data.astronaut(), root / split / "fake" / "astronaut.png")
        _save(hopper, root / split / "real" / "hopper.png")
        _save(data.coffee(), root / split / "real" / "coffee.png")
    return root


def test_face_folder_has_one_sample_per_face_and_lists_photos_without_one(photos: Path) -> None:
    det = registry.get("vgg16_slim").build(input_size=(32, 32), resize="center-crop")
    faces = CropFolder(photos / "test", det, crop="faces")
    assert len(faces) == 2 and faces.class_counts() == {"fake": 1, "real": 1}
    assert [p.name for p in faces.no_face] == ["coffee.png"]
    x, label = faces[0]
    path, box, _ = faces.items[0]
    assert box is not None and label == 0 and x.shape == (3, 32, 32)
    from models.data.folder import read_image

    assert torch.equal(x, crop_box(read_image(path), box, Fitting((32, 32), mode="center-crop")))


def test_without_a_crop_images_are_fitted_by_the_detectors_own_resize_mode(photos: Path) -> None:
    det = registry.get("vgg16_slim").build(input_size=(24, 32), resize="center-crop")
    folder = load_folder(photos / "test", det)
    from models.data.folder import read_image

    first = read_image(folder.paths[0])
    assert torch.equal(folder.images[0], fit_image(first[None], (24, 32), "center-crop")[0])
    plain = registry.get("vgg16_slim").build(input_size=(32, 32))
    assert type(folder_for(photos / "test", plain)).__name__ == "ImageFolderDataset"  # unchanged for resize


def test_train_with_crop_faces_trains_on_faces(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "faces"
    argv = ["train", str(photos), "--arch", "vgg16_slim", "--out", str(out), "--epochs", "1", "--batch-size", "2",
            "--image-size", "32", "--device", "cpu", "--crop", "faces"]  # fmt: skip
    monkeypatch.setattr("sys.argv", ["deepfake-guard", *argv])
    assert cli.main(argv) == 0
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]["dataset"]
    assert prov["crop"] == "faces" and prov["no_face"] == {"train": 1, "val": 1, "test": 1}
    assert prov["counts"]["train"] == {"fake": 1, "real": 1}


def test_the_sweep_keeps_the_base_detectors_semantics(photos: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = registry.get("resnet18").build(input_size=(32, 32), fake_index=1, resize="center-crop", mean=(0.5,) * 3)
    member = Member(name="base", detector=base.eval(), architecture="resnet18")
    config = EvalConfig(
        mode="quick", n_per_class=1, lipschitz_lambdas=(0.0,), lipschitz_epochs=1, lipschitz_batch_size=2,
        lipschitz_train_per_class=None, lipschitz_val_per_class=None,
    )  # fmt: skip
    members, _ = sweep(member, photos, tmp_path, config, device=torch.device("cpu"), crop="faces")
    meta = json.loads((tmp_path / f"{members[0].name}.json").read_text())
    assert (meta["fake_index"], meta["resize"], meta["mean"]) == (1, "center-crop", [0.5, 0.5, 0.5])
    assert meta["provenance"]["dataset"]["train_images"] == 2  # the two faces; coffee has none
    loaded = checkpoint.load(tmp_path / members[0].name)
    assert loaded.detector.fake_index == 1 and loaded.detector.resize == "center-crop"
