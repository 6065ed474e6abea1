from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import checkpoint, registry
from models.checkpoint import CheckpointError, CheckpointMeta
from models.zoo import Zoo
from tests.conftest import make_tiny_checkpoint


def test_roundtrip_gives_identical_outputs_and_reports_sha256(tmp_path: Path) -> None:
    torch.manual_seed(3)
    det = registry.get("vgg16_slim").build(input_size=(32, 32)).eval()
    det.get_buffer("mean").fill_(0.5)
    det.get_buffer("std").fill_(0.25)
    meta = CheckpointMeta(architecture="vgg16_slim", input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                          provenance={"seed": 3}, metrics={"accuracy": 0.5})  # fmt: skip
    digest = checkpoint.save(det, tmp_path / "m", meta)
    loaded = checkpoint.load(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 45, 45)
    with torch.no_grad():
        assert torch.equal(det(x), loaded.detector(x))
    assert loaded.sha256 == digest == checkpoint.sha256_file(tmp_path / "m.safetensors")
    assert json.loads((tmp_path / "m.json").read_text())["sha256"] == digest
    assert loaded.meta.metrics == {"accuracy": 0.5} and loaded.meta.mean == (0.5, 0.5, 0.5)
    assert loaded.name == "m"


def test_wrong_architecture_names_the_mismatch(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path, "r", arch="resnet18")
    with pytest.raises(
        CheckpointError, match=r"trained as 'resnet18'.*does not fit architecture 'vgg16_slim'.*missing"
    ):
        checkpoint.load(tmp_path / "r", architecture="vgg16_slim")


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path, "r", arch="resnet18")
    meta = json.loads((tmp_path / "r.json").read_text())
    meta["architecture"] = "resnet50"
    (tmp_path / "r.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="resnet50"):
        checkpoint.load(tmp_path / "r")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint weights"):
        checkpoint.load(tmp_path / "nothing")
    make_tiny_checkpoint(tmp_path, "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps({"architecture": "vgg16_slim"}))
    with pytest.raises(CheckpointError, match="malformed metadata"):
        checkpoint.load(tmp_path / "m")


def test_unknown_architecture_in_metadata(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path, "m")
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["architecture"] = "alexnet"
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown architecture 'alexnet'"):
        checkpoint.load(tmp_path / "m")


def test_zoo_loads_a_directory_by_stem(tiny_checkpoints: Path) -> None:
    zoo = Zoo.from_directory(tiny_checkpoints, torch.device("cpu"))
    assert zoo.names() == ["tiny-resnet", "tiny-vgg"]
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        zoo.get("nope")


def test_zoo_refuses_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist"):
        Zoo.from_directory(tmp_path / "nowhere", torch.device("cpu"))
    assert Zoo.from_directory(tmp_path, torch.device("cpu")).names() == []  # an empty folder is a valid (empty) zoo


def test_format_1_checkpoints_load_with_their_old_meaning() -> None:
    root = checkpoint.DEMO_CHECKPOINTS
    for name in ("demo-resnet18", "demo-vgg16"):
        raw = json.loads((root / f"{name}.json").read_text())
        assert raw["format_version"] == 1 and "fake_index" not in raw and "resize" not in raw
        loaded = checkpoint.load(root / name)
        assert (loaded.meta.fake_index, loaded.meta.resize, loaded.meta.logits) == (0, "resize", 2)
        assert loaded.detector.fake_index == 0 and loaded.detector.resize == "resize"
        assert loaded.sha256 == raw["sha256"]
    # a format-1 1-logit head's sigmoid scored fake
    legacy = CheckpointMeta.from_json({"architecture": "resnet18", "input_size": [8, 8], "mean": [0, 0, 0],
                                       "std": [1, 1, 1], "logits": 1, "format_version": 1}, source="x")  # fmt: skip
    assert legacy.fake_index == 1


def test_semantics_roundtrip_and_newer_formats_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    meta = CheckpointMeta(architecture="vgg16_slim", input_size=(40, 48), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                          logits=1, fake_index=1, resize="center-crop")  # fmt: skip
    det = checkpoint.build(meta)
    checkpoint.save(det, tmp_path / "m", meta)
    loaded = checkpoint.load(tmp_path / "m")
    assert loaded.meta.semantics() == meta.semantics()
    d = loaded.detector
    assert (d.fake_index, d.resize, d.input_size) == (1, "center-crop", (40, 48))
    x = torch.rand(2, 3, 30, 50)
    with torch.no_grad():
        assert torch.equal(det.eval()(x), loaded.detector(x))
    raw = json.loads((tmp_path / "m.json").read_text())
    raw["format_version"] = 4
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="format_version 4 is newer"):
        checkpoint.load(tmp_path / "m")
    raw["format_version"], raw["fake_index"] = 2, 5
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="fake_index must be 0 or 1, got 5"):
        checkpoint.load(tmp_path / "m")
