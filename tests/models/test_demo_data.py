"""The demo dataset: layout, reproducibility, disjoint splits, and fakes that differ from reals in the centre."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import demo
from models.data.folder import ImageFolderDataset, list_images, load_image_folder, read_image
from models.detector import FAKE_INDEX, REAL_INDEX
from models.fitting import Fitting

TINY = demo.DemoConfig(size=32, n_train=8, n_val=4, n_test=6, generator_crops=16, generator_steps=20, generator_batch=4)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo.generate(out, TINY)
    return out


def test_layout_counts_and_manifest(tiny_dir: Path) -> None:
    for split in demo.SPLITS:
        for cls in ("fake", "real"):
            files = sorted((tiny_dir / split / cls).glob("*.png"))
            assert len(files) == TINY.count(split) // 2
            with Image.open(files[0]) as im:
                assert im.mode == "RGB" and im.size == (TINY.size, TINY.size)
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    assert manifest["config"]["seed"] == TINY.seed
    assert {s["name"] for s in manifest["sources"]} == {s.name for s in demo.SOURCES}
    assert "autoencoder" in manifest["generator"]["architecture"]
    listed = {r["path"]: r["sha256"] for split in demo.SPLITS for r in manifest["files"][split]}
    assert listed == _tree_hashes(tiny_dir)
    assert "not a real deepfake dataset" in (tiny_dir / "README.txt").read_text()


def test_same_seed_same_bytes_whatever_the_thread_count(tiny_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = demo.generate(tmp_path / "again", TINY)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # generate restores the caller's setting
    assert _tree_hashes(tmp_path / "again") == _tree_hashes(tiny_dir)
    assert again["content_sha256"] == json.loads((tiny_dir / "manifest.json").read_text())["content_sha256"]


def test_other_seed_other_bytes(tiny_dir: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    other = demo.generate(tmp_path / "other", replace(TINY, seed=1))
    assert other["content_sha256"] != json.loads((tiny_dir / "manifest.json").read_text())["content_sha256"]


def test_one_split_alone_equals_that_split_of_the_full_set(tiny_dir: Path, tmp_path: Path) -> None:
    manifest = demo.generate(tmp_path / "test_only", TINY, splits=["test"])
    assert manifest["splits"] == ["test"]
    assert not (tmp_path / "test_only" / "train").exists()
    full = _tree_hashes(tiny_dir)
    alone = _tree_hashes(tmp_path / "test_only")
    assert alone == {k: v for k, v in full.items() if k.startswith("test/")}


def test_every_crop_lies_inside_one_tile_of_its_split(tiny_dir: Path) -> None:
    manifest = json.loads((tiny_dir / "manifest.json").read_text())
    shapes = {s["name"]: (s["height"], s["width"]) for s in manifest["sources"]}
    tile = demo.tile_side(TINY)
    for split in demo.SPLITS:
        for rec in manifest["files"][split]:
            tiles = demo.split_tiles(*shapes[rec["photo"]], tile)[split]
            assert any(
                ty <= rec["top"]
                and rec["top"] + rec["side"] <= ty + tile
                and tx <= rec["left"]
                and rec["left"] + rec["side"] <= tx + tile
                for ty, tx in tiles
            ), (split, rec)


def test_split_tiles_partition_the_grid() -> None:
    tiles = demo.split_tiles(300, 451, 128)  # a small photo: a 2 x 3 grid
    assert sum(len(t) for t in tiles.values()) == 6
    assert all(tiles[s] for s in demo.SPLITS)  # every split gets a tile even in a small photo
    flat = [t for s in demo.SPLITS for t in tiles[s]]
    assert len(set(flat)) == len(flat)
    big = demo.split_tiles(1000, 1000, 100)
    assert [len(big[s]) for s in demo.SPLITS] == [60, 20, 20]


def test_bad_config_and_splits_raise() -> None:
    with pytest.raises(ValueError, match="n_train"):
        demo.DemoConfig(n_train=7)
    with pytest.raises(ValueError, match="size"):
        demo.DemoConfig(size=8)
    with pytest.raises(ValueError, match="holdout"):
        demo.generate("/nonexistent-never-written", TINY, splits=["holdout"])


def test_fake_differs_from_its_source_in_the_centre_only() -> None:
    photos = demo.load_photos()
    rng = np.random.default_rng(0)
    crops = torch.stack([demo.to_tensor(demo.sample_crop(rng, photos, "train", TINY)[0]) for _ in range(8)])
    generator, _ = demo.train_generator(crops, seed=0, steps=20, batch_size=4)
    size = TINY.size
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = ((yy - size / 2).abs() < size / 8) & ((xx - size / 2).abs() < size / 8)
    border = (yy < size // 8) | (yy >= size - size // 8) | (xx < size // 8) | (xx >= size - size // 8)
    for _ in range(4):
        pixels, _ = demo.sample_crop(rng, photos, "test", TINY)
        source = demo.to_tensor(pixels)
        fake = demo.synthesize_fake(source, generator, demo.face_mask(rng, size))
        diff = (fake - source).abs().mean(0)
        assert diff[centre].mean() > 0.005
        assert diff[border].mean() < 1e-3 * diff[centre].mean()


def test_face_mask_is_feathered_and_centred() -> None:
    m = demo.face_mask(np.random.default_rng(3), 64)[0]
    assert m.shape == (64, 64) and float(m.min()) == 0.0 and float(m.max()) == 1.0
    assert float(m[32, 32]) == 1.0 and float(m[0, 0]) == 0.0
    assert ((m > 0.05) & (m < 0.95)).any()  # a soft seam, not a hard paste


def test_image_folder_maps_fake_to_0(tiny_dir: Path) -> None:
    items = list_images(tiny_dir / "train")
    assert {label for path, label in items if path.parent.name == "fake"} == {FAKE_INDEX}
    assert {label for path, label in items if path.parent.name == "real"} == {REAL_INDEX}
    ds = ImageFolderDataset(tiny_dir / "val", fitting=Fitting((16, 16)))
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert y == FAKE_INDEX  # sorted: fake/ before real/
    assert ds.class_counts() == {"fake": 2, "real": 2}
    loaded = load_image_folder(tiny_dir / "test", fitting=Fitting((32, 32)))
    assert loaded.images.shape == (6, 3, 32, 32) and loaded.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_read_image_is_exact_at_native_size(tiny_dir: Path) -> None:
    path = sorted((tiny_dir / "test" / "real").glob("*.png"))[0]
    x = read_image(path)
    with Image.open(path) as im:
        expected = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    assert torch.equal(x, expected)


def test_image_folder_rejects_other_classes(tmp_path: Path) -> None:
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match="fake"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")
