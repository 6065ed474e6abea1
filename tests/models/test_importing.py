"""Importing detectors trained elsewhere (models/importing.py, deepfake-guard import-detector)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from deepfake_guard.cli import main
from models import checkpoint, importing, registry
from models.importing import DetectorImportError

# The acceptance architectures at the smallest input each handles quickly on a CPU.
ACCEPTANCE = [
    ("torchvision:resnet50", 64),
    ("torchvision:convnext_tiny", 64),
    ("torchvision:efficientnet_b0", 64),
    ("timm:legacy_xception", 71),
    ("timm:tf_efficientnet_b4", 64),
]


def _plain_p_fake(net: nn.Module, x: torch.Tensor, arch: str, fake_index: int) -> torch.Tensor:
    """What the owner's own code computes: normalise, forward, softmax, take the fake column."""
    spec = registry.get(arch)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(net((x - mean) / std), dim=1)[:, fake_index]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "size"), ACCEPTANCE)
def test_acceptance_architectures_import_from_both_formats_and_match_the_plain_model(
    arch: str, size: int, tmp_path: Path, no_network: None
) -> None:
    torch.manual_seed(1234)
    net = registry.get(arch).builder(2).eval()
    state = net.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "src.safetensors"))
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "src.pth")
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    expected = _plain_p_fake(net, x, arch, fake_index=1)
    for src in ("src.safetensors", "src.pth"):
        out = tmp_path / src.replace(".", "-")
        rc = main(["import-detector", str(tmp_path / src), "--arch", arch, "--fake-index", "1",
                   "--input-size", str(size), str(size), "--out", str(out)])  # fmt: skip
        assert rc == 0
        loaded = checkpoint.load(out)
        assert (loaded.meta.fake_index, loaded.meta.logits, loaded.meta.input_size) == (1, 2, (size, size))
        p = loaded.detector.p_fake(x)
        assert torch.allclose(p, expected, atol=1e-5, rtol=0), (src, (p - expected).abs().max())
        meta = json.loads(checkpoint.paths_for(out)[1].read_text())
        source = meta["provenance"]["source"]
        assert source["sha256"] == checkpoint.sha256_file(tmp_path / src)
        assert source["format"] == ("safetensors" if src.endswith("safetensors") else "state-dict")
        assert source["unwrapped"] == ([] if src.endswith("safetensors") else ["module."])
        assert meta["provenance"]["command"].startswith(f"deepfake-guard import-detector {src} --arch")  # names only


class _WritesMarker:
    """Unpickling this runs ``Path.write_text(marker)``: the code a hostile .pth would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "the pickle ran code"))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    net = registry.get("resnet18").builder(2)
    torch.save({"state_dict": net.state_dict(), "hook": _WritesMarker(marker)}, tmp_path / "evil.pth")
    with pytest.raises(DetectorImportError, match=r"needs code to load.*torch.save\(model.state_dict\(\)"):
        importing.import_detector(tmp_path / "evil.pth", architecture="resnet18", fake_index=1)
    assert not marker.exists()
    # through the command: exit 2, an error line, nothing written
    rc = main(["import-detector", str(tmp_path / "evil.pth"), "--arch", "resnet18", "--fake-index", "1",
               "--out", str(tmp_path / "out")])  # fmt: skip
    assert rc == 2 and not marker.exists() and not (tmp_path / "out.json").exists()
    # the file is as hostile as claimed: an unrestricted unpickler runs its code
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.read_text() == "the pickle ran code"


def test_a_whole_pickled_model_is_refused_with_the_export_recipe(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(DetectorImportError, match=r"names torch.nn.modules.linear.Linear.*state_dict\(\)"):
        importing.read_source(tmp_path / "whole.pth")


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()


def test_programs_need_allow_code(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(_tiny()), tmp_path / "m.ts")
    torch.export.save(torch.export.export(_tiny(), (torch.rand(1, 3, 16, 16),)), tmp_path / "m.pt2")
    assert importing.sniff_format(tmp_path / "m.ts") == "torchscript"
    assert importing.sniff_format(tmp_path / "m.pt2") == "torch-export"
    for name in ("m.ts", "m.pt2"):
        with pytest.raises(DetectorImportError, match=r"program, not weights.*allow_code"):
            importing.read_source(tmp_path / name)
        source = importing.read_source(tmp_path / name, allow_code=True)
        assert set(source.state) == set(_tiny().state_dict()) and source.program is not None


def test_a_torchscript_program_gives_its_weights_to_the_named_architecture(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = registry.get("vgg16_slim").builder(2).eval()
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 32, 32)), tmp_path / "m.ts")
    imported = importing.import_detector(
        tmp_path / "m.ts", architecture="vgg16_slim", fake_index=0, input_size=(32, 32), allow_code=True
    )
    assert imported.validation["program_max_abs_logit_diff"] < 1e-5
    assert imported.source.program is None  # nothing of the program is kept
    with pytest.raises(DetectorImportError, match="does not fit resnet18"):
        importing.import_detector(tmp_path / "m.ts", architecture="resnet18", fake_index=0, allow_code=True)


def test_wrappers_are_unwrapped_and_unfit_keys_named(tmp_path: Path) -> None:
    state = registry.get("resnet18").builder(2).state_dict()
    wrapped = {"epoch": 3, "model": {f"module._orig_mod.{k}": v for k, v in state.items()}, "optimizer": {}}
    got, taken = importing.unwrap(wrapped)
    assert taken == ["model", "module.", "_orig_mod."] and set(got) == set(state)
    # "model." is stripped only when that makes the keys fit
    got, taken = importing.unwrap({f"model.{k}": v for k, v in state.items()}, list(state))
    assert taken == ["model."] and set(got) == set(state)
    got, taken = importing.unwrap({f"model.{k}": v for k, v in state.items()}, ["model.conv1.weight"])
    assert taken == []
    broken = dict(state)
    broken.pop("fc.bias")
    broken["extra.weight"] = torch.zeros(1)
    broken["fc.weight"] = torch.zeros(5, 512)
    save_file({k: v.contiguous() for k, v in broken.items()}, str(tmp_path / "b.safetensors"))
    with pytest.raises(DetectorImportError, match=r"missing 1 tensors.*fc.bias.*unexpected 1.*extra.weight.*fc.weight"):
        importing.import_detector(tmp_path / "b.safetensors", architecture="resnet18", fake_index=1)
    with pytest.raises(DetectorImportError, match=r"entries \['epoch', 'weights'\] are not tensors"):
        importing.unwrap({"epoch": 3, "weights": state})


class _Flat(nn.Module):
    """A model whose output does not depend on its input: no gradient for an attack to follow."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.ones(x.shape[0], 1))


def test_validation_refuses_wrong_logits_and_a_zero_gradient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = registry.get("resnet18").builder(2).state_dict()
    torch.save(state, tmp_path / "two.pth")
    with pytest.raises(DetectorImportError, match=r"fc.weight: checkpoint \(2, 512\) vs torchvision:resnet18 \(1, "):
        importing.import_detector(tmp_path / "two.pth", architecture="torchvision:resnet18", logits=1, fake_index=1)
    registry.register(registry.ArchitectureSpec("test_flat", lambda n: _Flat(), (16, 16), "test"))
    try:
        torch.save(_Flat().state_dict(), tmp_path / "flat.pth")
        with pytest.raises(DetectorImportError, match=r"input gradient.*is 0\.0"):
            importing.import_detector(tmp_path / "flat.pth", architecture="test_flat", fake_index=1)
    finally:
        registry._REGISTRY.pop("test_flat")


def test_a_one_logit_head_scores_fake_when_fake_index_is_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = registry.get("torchvision:resnet18").builder(1).eval()
    torch.save(net.state_dict(), tmp_path / "s.pth")
    x = torch.rand(2, 3, 32, 32)
    spec = registry.get("torchvision:resnet18")
    with torch.no_grad():
        z = net((x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1))[:, 0]
    for fake_index, expected in ((1, torch.sigmoid(z)), (0, 1 - torch.sigmoid(z))):
        imported = importing.import_detector(
            tmp_path / "s.pth", architecture="torchvision:resnet18", logits=1, fake_index=fake_index,
            input_size=(32, 32),
        )  # fmt: skip
        importing.write(imported, tmp_path / f"o{fake_index}", command="c", argv=[])
        loaded = checkpoint.load(tmp_path / f"o{fake_index}")
        assert torch.allclose(loaded.detector.p_fake(x), expected, atol=1e-6)


def _folder(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("fake", "real"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_eval_metrics_and_semantics_go_into_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    torch.save(registry.get("vgg16_slim").builder(2).state_dict(), tmp_path / "v.pth")
    folder = _folder(tmp_path / "eval")
    rc = main(["import-detector", str(tmp_path / "v.pth"), "--arch", "vgg16_slim", "--fake-index", "1",
               "--input-size", "32", "32", "--resize", "center-crop", "--mean", "0.5", "0.5", "0.5",
               "--std", "0.25", "0.25", "0.25", "--eval", str(folder),
               "--out", str(tmp_path / "ck" / "v")])  # fmt: skip
    assert rc == 0
    meta = json.loads((tmp_path / "ck" / "v.json").read_text())
    assert meta["format_version"] == 3 and meta["fake_index"] == 1 and meta["resize"] == "center-crop"
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3 and meta["input_size"] == [32, 32]
    ev = meta["metrics"]["eval"]
    assert ev["n"] == 6 and ev["support"] == {"fake": 3, "real": 3}
    assert {"accuracy", "auroc", "precision", "recall"} <= set(ev)
    # the metrics are those of the served detector on the folder, images at full size
    loaded = checkpoint.load(tmp_path / "ck" / "v")
    from models.data.folder import ImageFolderDataset

    data = ImageFolderDataset(folder)
    preds = [int(loaded.detector(data[i][0][None]).argmax()) for i in range(len(data))]
    accuracy = float(np.mean([p == label for p, (_, label) in zip(preds, data.items, strict=True)]))
    assert ev["accuracy"] == pytest.approx(accuracy)
    assert "eval" in capsys.readouterr().err  # the tqdm bar


def test_command_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(registry.get("resnet18").builder(2).state_dict(), tmp_path / "r.pth")
    out = str(tmp_path / "o")
    cases = [
        (["--arch", "torchvision:resnet19"], "unknown torchvision model 'resnet19'.*resnet18"),
        (["--arch", "timm:nope_net"], "unknown timm model 'nope_net'"),
        (["--arch", "keras:x"], "unknown architecture 'keras:x'"),
        (["--arch", "resnet50"], "does not fit resnet50"),
        (["--arch", "resnet18", "--eval", str(tmp_path / "none")], "is not a folder"),
    ]
    for extra, message in cases:
        rc = main(["import-detector", str(tmp_path / "r.pth"), "--fake-index", "1", "--out", out, *extra])
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert err.startswith("error: ") and re.search(message, err), (extra, err)
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a model")
    assert main(["import-detector", str(tmp_path / "junk.bin"), "--arch", "resnet18", "--fake-index", "1",
                 "--out", out]) == 2  # fmt: skip
    assert "not a safetensors file" in capsys.readouterr().err
    again = ["import-detector", str(tmp_path / "r.pth"), "--arch", "resnet18", "--fake-index", "0", "--out", out]
    assert main(again) == 0
    assert main(again) == 2
    assert "pass --force" in capsys.readouterr().err


def test_calibrate_records_the_threshold_detect_applies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    torch.save(registry.get("vgg16_slim").builder(2).state_dict(), tmp_path / "v.pth")
    val, test = _folder(tmp_path / "val"), _folder(tmp_path / "test")
    roc = tmp_path / "roc.png"
    rc = main(["import-detector", str(tmp_path / "v.pth"), "--arch", "vgg16_slim", "--fake-index", "1",
               "--input-size", "32", "32", "--eval", str(test), "--calibrate", str(val), "--target-fpr", "0.34",
               "--roc", str(roc), "--out", str(tmp_path / "ck" / "v")])  # fmt: skip
    assert rc == 0 and roc.stat().st_size > 0
    meta = json.loads((tmp_path / "ck" / "v.json").read_text())
    cal = meta["metrics"]["calibration"]
    assert cal["target_fpr"] == 0.34 and cal["fitted_on"]["path"] == val.name  # no machine path
    from models.evaluation.calibration import fit_threshold, folder_scores, rates_at

    p, y = folder_scores(checkpoint.load(tmp_path / "ck" / "v").detector, val)
    assert cal["threshold"] == fit_threshold(p, y, 0.34)  # fitted on the served detector's val scores
    assert cal["fitted_on"]["fpr"] == rates_at(p, y, cal["threshold"])["fpr"]
    assert {"auroc", "eer", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct"} <= set(cal["test"])
    assert checkpoint.load(tmp_path / "ck" / "v").meta.threshold == cal["threshold"]
    assert "threshold" in capsys.readouterr().out
