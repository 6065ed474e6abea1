"""The owner's numbers (docs/IMPORTING.md, "How an image reaches your detector"): one reader, one fitter and one
operating point, whatever path a file takes.

For each fitting mode (whole-image resize, centre crop, and torchvision/timm's Resize(S) + CenterCrop(C) in bilinear
and bicubic), each detector's p_fake of the same file (an EXIF-rotated JPEG, a CMYK JPEG, a 16-bit PNG, a palette
PNG, a grey PNG and an odd aspect ratio) must agree to 1e-6 through /detect (real HTTP), the CLI ``attack`` report's
``p_fake_before``, ``robustness``'s clean score, ``import-detector --eval``'s scores and ``evaluate``'s clean scores;
and equal the owner's own torchvision pipeline for Resize(256) + CenterCrop(224).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from deepfake_guard.cli import main as cli
from deepfake_guard.embedded import EmbeddedRedis
from models import checkpoint, registry
from models.checkpoint import CheckpointMeta
from models.detector import FAKE_INDEX, Detector
from models.evaluation.clean import load_member
from models.evaluation.run import FittedSplit
from models.images import decode_image
from models.importing import evaluate_folder
from tests import imagefiles as files
from tests.conftest import Processes, service_env

ARCH = "vgg16_slim"
#: name -> (input size, resize mode, resize_short, interpolation)
DETECTORS = {
    "fit-resize": (40, "resize", None, "bilinear"),
    "fit-center": (40, "center-crop", None, "bilinear"),
    "fit-short": (40, "short-side-crop", 48, "bilinear"),
    "fit-short-bicubic": (40, "short-side-crop", 46, "bicubic"),
}
TOL = 1e-6


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = files.gradient_rgb(w, h)
    noise = rng.integers(-40, 40, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=np.int16) + noise, 0, 255).astype(np.uint8), "RGB")


def exif_rotated_jpeg() -> bytes:
    """Stored 60 x 36, shown 36 x 60: EXIF orientation 6 (rotate 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return files.encode(_photo(60, 36, 1), "JPEG", quality=92, exif=exif.tobytes())


def image_files() -> dict[str, bytes]:
    palette = _photo(50, 44, 2).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return {
        "exif-rotated.jpg": exif_rotated_jpeg(),
        "cmyk.jpg": files.encode(_photo(45, 52, 3).convert("CMYK"), "JPEG", quality=95),
        "gray16.png": files.png16_gray(),
        "palette.png": files.encode(palette, "PNG"),
        "gray.png": files.encode(_photo(48, 48, 4).convert("L"), "PNG"),
        "odd-aspect.png": files.encode(_photo(97, 41, 5), "PNG"),
    }


def make_detector(folder: Path, name: str, *, seed: int, size: int, resize: str, short: int | None, interp: str,
                  calibration: dict | None = None) -> None:  # fmt: skip
    torch.manual_seed(seed)
    spec = registry.get(ARCH)
    meta = CheckpointMeta(
        architecture=ARCH, input_size=(size, size), mean=spec.mean, std=spec.std, resize=resize, resize_short=short,
        interpolation=interp, metrics={} if calibration is None else {"calibration": calibration},
    )  # fmt: skip
    checkpoint.save(checkpoint.build(meta).eval(), folder / name, meta)


def reference(det: Detector, data: bytes) -> float:
    """What the detector says of the file when it is read as an upload is read and fitted by its own fitting."""
    with torch.no_grad():
        return float(torch.softmax(det(decode_image(data)[None]), dim=1)[0, FAKE_INDEX])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("owner")
    ckpts = root / "checkpoints"
    ckpts.mkdir()
    for i, (name, (size, resize, short, interp)) in enumerate(DETECTORS.items()):
        make_detector(ckpts, name, seed=i, size=size, resize=resize, short=short, interp=interp)
    data = root / "data"
    images = image_files()
    for i, (fname, blob) in enumerate(sorted(images.items())):
        target = data / ("fake" if i % 2 == 0 else "real") / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    dets = {name: checkpoint.load(ckpts / name).detector for name in DETECTORS}
    expected = {name: {f: reference(d, b) for f, b in images.items()} for name, d in dets.items()}
    return {"root": root, "ckpts": ckpts, "data": data, "images": images, "expected": expected}


def test_the_fitting_is_what_torchvision_does_and_the_reader_applies_exif() -> None:
    x = decode_image(exif_rotated_jpeg())
    assert tuple(x.shape[-2:]) == (60, 36)  # upright, as a viewer shows it
    for interp, mode in (("bilinear", InterpolationMode.BILINEAR), ("bicubic", InterpolationMode.BICUBIC)):
        torch.manual_seed(0)
        det = registry.get(ARCH).build(input_size=(224, 224), resize="short-side-crop", resize_short=256,
                                       interpolation=interp).eval()  # fmt: skip
        owner = T.Compose([T.Resize(256, interpolation=mode, antialias=True), T.CenterCrop(224)])
        for w, h in ((300, 200), (97, 41), (224, 224), (250, 333)):
            img = decode_image(files.encode(_photo(w, h, w), "PNG"))
            theirs = owner(img)
            if interp == "bicubic":  # clamped, as PIL's and torchvision's 8-bit resizes are (models/fitting.py)
                theirs = theirs.clamp(0, 1)
            assert torch.allclose(det.fit(img[None])[0], theirs, atol=1e-6, rtol=0), (interp, w, h)
            # The owner's p_fake: normalise, their backbone, softmax, the fake column.
            normalise = T.Normalize(det.get_buffer("mean").flatten().tolist(), det.get_buffer("std").flatten().tolist())
            with torch.no_grad():
                theirs_p = float(torch.softmax(det.backbone(normalise(theirs)[None]), dim=1)[0, FAKE_INDEX])
            assert abs(float(det.p_fake(img[None])[0]) - theirs_p) <= TOL, (interp, w, h)


@pytest.mark.e2e
def test_the_same_file_gives_the_same_p_fake_on_every_path(
    world: dict, redis_server: EmbeddedRedis, processes: Processes, tmp_path: Path
) -> None:
    expected, images, data, ckpts = world["expected"], world["images"], world["data"], world["ckpts"]
    # /detect over real HTTP.
    base = processes.api(service_env(redis_server.url, ckpts, DFG_DEFAULT_MODEL="fit-resize"))
    with httpx.Client(base_url=base, timeout=120) as http:
        for name in DETECTORS:
            for fname, blob in images.items():
                resp = http.post("/detect", files={"file": (fname, blob)}, data={"model": name})
                assert resp.status_code == 200, resp.text
                got = resp.json()["results"][0]["p_fake"]
                assert abs(got - expected[name][fname]) <= TOL, ("/detect", name, fname, got, expected[name][fname])
        models = {m["name"]: m for m in http.get("/models").json()["models"]}
        assert models["fit-short"]["resize"] == "short-side-crop" and models["fit-short"]["resize_short"] == 48
        assert models["fit-short-bicubic"]["interpolation"] == "bicubic"

    for name in DETECTORS:
        # The CLI attack report's p_fake_before (one image at a time: the files differ in size).
        out = tmp_path / f"attack-{name}"
        assert cli(["attack", str(data), "-o", str(out), "--checkpoints", str(ckpts), "--target", name,
                    "--method", "fgsm", "--eps", "1/255", "--batch", "1"]) == 0  # fmt: skip
        with (out / "metrics.csv").open() as f:
            rows = {Path(r["file"]).name: float(r["p_fake_before"]) for r in csv.DictReader(f)}
        assert set(rows) == set(images)
        for fname, p in rows.items():
            assert abs(p - expected[name][fname]) <= TOL, ("attack", name, fname, p, expected[name][fname])

        # robustness's clean score (the suite attacks the fitted input; its clean score must be the file's).
        record_path = tmp_path / f"robust-{name}.json"
        assert cli(["robustness", str(ckpts / name), str(data), "--eps", "1/255", "--budget", "quick",
                    "-n", "6", "-o", str(record_path)]) == 0  # fmt: skip
        record = json.loads(record_path.read_text())
        assert record["preprocessing"]["resize"] == DETECTORS[name][1]
        for row in record["per_image"]:
            fname = Path(row["file"]).name
            assert abs(row["p_fake"] - expected[name][fname]) <= TOL, ("robustness", name, fname)

        # import-detector --eval and evaluate read the folder through the same reader and fitter.
        loaded = checkpoint.load(ckpts / name)
        scored = evaluate_folder(loaded.detector, data, keep_scores=True)
        member = load_member(ckpts / name, device=torch.device("cpu"))
        split = FittedSplit(data, "none")
        p_eval = split.p_fake(member, batch_size=4, device=torch.device("cpu")).tolist()
        paths = split.for_member(member).paths
        for path, p_imp, p_ev in zip(paths, scored["scores"], p_eval, strict=True):
            assert abs(p_imp - expected[name][path.name]) <= TOL, ("import-detector --eval", name, path.name)
            assert abs(p_ev - expected[name][path.name]) <= TOL, ("evaluate", name, path.name)


def test_a_strip_too_long_for_short_side_crop_is_refused_by_name(tmp_path: Path, redis_url: str) -> None:
    det = registry.get(ARCH).build(input_size=(32, 32), resize="short-side-crop", resize_short=36)
    with pytest.raises(ValueError, match="more than 64 times longer than wide"):
        det(torch.rand(1, 3, 16, 16 * 65))
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import Settings

    make_detector(tmp_path, "strip", seed=0, size=32, resize="short-side-crop", short=36, interp="bilinear")
    settings = Settings(checkpoints_dir=tmp_path, redis_url=redis_url, device="cpu")  # type: ignore[arg-type]
    strip = files.encode(_photo(16 * 65, 16, 0), "PNG")
    with TestClient(create_app(settings)) as client:
        resp = client.post("/detect", files={"file": ("strip.png", strip)})
        assert resp.status_code == 422 and "more than 64 times longer" in resp.json()["detail"], resp.text


def test_older_checkpoints_keep_their_meaning(tmp_path: Path) -> None:
    """A format-2 file (no resize_short, interpolation or antialias) loads as bilinear, antialiased, as before."""
    make_detector(tmp_path, "old", seed=0, size=32, resize="center-crop", short=None, interp="bilinear")
    raw = json.loads((tmp_path / "old.json").read_text())
    for key in ("resize_short", "interpolation", "antialias"):
        raw.pop(key)
    raw["format_version"] = 2
    (tmp_path / "old.json").write_text(json.dumps(raw))
    loaded = checkpoint.load(tmp_path / "old")
    assert loaded.detector.fitting.describe() == {
        "resize": "center-crop", "input_size": [32, 32], "interpolation": "bilinear", "antialias": True
    }  # fmt: skip


def test_the_importer_declares_the_eval_transform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    torch.save(registry.get(ARCH).builder(2).state_dict(), tmp_path / "v.pth")
    base = ["import-detector", str(tmp_path / "v.pth"), "--arch", ARCH, "--fake-index", "1", "--input-size", "32", "32"]
    assert cli([*base, "--resize", "short-side-crop", "--crop-pct", "0.875", "--interpolation", "bicubic",
                "--out", str(tmp_path / "timm-style")]) == 0  # fmt: skip
    meta = checkpoint.load(tmp_path / "timm-style").meta
    assert (meta.resize, meta.resize_short, meta.interpolation, meta.antialias) == (
        "short-side-crop", 36, "bicubic", True
    )  # fmt: skip
    assert cli([*base, "--resize", "short-side-crop", "--out", str(tmp_path / "x")]) == 2
    assert "needs --resize-short S or --crop-pct P" in capsys.readouterr().err
    assert cli([*base, "--resize-short", "40", "--out", str(tmp_path / "y")]) == 2
    assert cli([*base, "--resize", "short-side-crop", "--resize-short", "20", "--out", str(tmp_path / "z")]) == 2
    assert "at least the input size's longer side 32" in capsys.readouterr().err
