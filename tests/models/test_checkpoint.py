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
