"""One operating point everywhere (docs/IMPORTING.md, "One threshold"): with a calibrated checkpoint, /detect,
/attack (synchronous and queued), crop=faces, /purify's labels and the robustness suite give the same verdict on the
same file; ``serve`` starts on imported detectors alone; calibration records are what the service will judge."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_guard.cli import main as cli
from models import checkpoint
from models.checkpoint import public
from models.evaluation.calibration import calibrate
from models.facecrop import find_faces, most_fake, score_faces
from models.images import decode_image
from tests import imagefiles as files
from tests.conftest import ROOT, Processes, free_port, make_tiny_checkpoint, service_env, wait_for, wait_http


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def astronaut_512() -> bytes:
    from skimage import data

    return _png(Image.fromarray(data.astronaut()).resize((512, 512)))


def straddling(p: float) -> float:
    """A threshold on the other side of ``p`` than 0.5 is: the verdict at it differs from the verdict at 0.5."""
    return min(0.999, p + 1e-3) if p >= 0.5 else max(0.001, p - 1e-3)


def calibrate_to(path: Path, threshold: float) -> None:
    meta_path = path.with_suffix(".json")
    raw = json.loads(meta_path.read_text())
    raw["metrics"] = {"calibration": {"threshold": threshold, "target_fpr": 0.05}}
    meta_path.write_text(json.dumps(raw))


@pytest.mark.e2e
def test_a_calibrated_checkpoint_gives_one_verdict_on_every_path(
    tmp_path: Path, redis_url: str, processes: Processes
) -> None:
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    image = files.encode(files.gradient_rgb(48, 40), "PNG")
    face_photo = astronaut_512()
    whole = make_tiny_checkpoint(ckpts, "cal-whole", seed=3)
    face = make_tiny_checkpoint(ckpts, "cal-face", seed=4)
    p_whole = float(checkpoint.load(whole).detector.p_fake(decode_image(image)[None])[0])
    photo = decode_image(face_photo)
    boxes = find_faces(photo)
    assert boxes, "dlib finds the astronaut's face at 512 px"
    p_face = most_fake(score_faces(checkpoint.load(face).detector, photo, boxes))
    assert p_face is not None
    calibrate_to(whole, straddling(p_whole))
    calibrate_to(face, straddling(p_face))
    expected_whole = "fake" if p_whole >= straddling(p_whole) else "real"
    expected_face = "fake" if p_face >= straddling(p_face) else "real"
    assert expected_whole != ("fake" if p_whole >= 0.5 else "real")  # a 0.5 cut would say otherwise

    env = service_env(redis_url, ckpts, DFG_DEFAULT_MODEL="cal-whole", DFG_PGD_SYNC_MAX_STEPS="5",
                      DFG_FAST_LANE_MAX_STEPS="1000")  # fmt: skip
    base = processes.api(env)
    processes.worker(env)
    with httpx.Client(base_url=base, timeout=300) as http:
        det = http.post("/detect", files={"file": ("x.png", image)}).json()
        assert (det["threshold_source"], det["results"][0]["label"]) == ("checkpoint", expected_whole), det
        info = {m["name"]: m for m in http.get("/models").json()["models"]}["cal-whole"]
        assert (info["threshold"], info["threshold_source"]) == (straddling(p_whole), "checkpoint")

        sync = http.post("/attack", files={"file": ("x.png", image)}, data={"method": "fgsm", "eps": "1/255"})
        assert sync.status_code == 200, sync.text
        body = sync.json()
        assert (body["label_before"], body["threshold"], body["threshold_source"]) == (
            expected_whole, straddling(p_whole), "checkpoint"
        )  # fmt: skip
        assert body["success"] == (body["label_after"] != body["label_before"])

        queued = http.post("/attack", files={"file": ("x.png", image)},
                           data={"method": "pgd", "eps": "1/255", "steps": "10"})  # fmt: skip
        assert queued.status_code == 202, queued.text
        purify = http.post("/purify", files={"file": ("x.png", image)}, data={"method": "jpeg"})
        assert purify.status_code == 202, purify.text

        faces = http.post("/detect", files={"file": ("a.png", face_photo)}, data={"model": "cal-face", "crop": "faces"})
        assert faces.json()["results"][0]["label"] == expected_face, faces.text
        form = {"method": "fgsm", "eps": "1/255", "crop": "faces", "target": "cal-face"}
        face_attack = http.post("/attack", files={"file": ("a.png", face_photo)}, data=form)
        assert face_attack.status_code == 200, face_attack.text
        assert face_attack.json()["label_before"] == expected_face

        def finished(location: str) -> dict | None:
            job = http.get(location).json()
            assert job["status"] not in ("failed", "stopped", "canceled"), job
            return job if job["status"] == "finished" else None

        attack_job = wait_for(lambda: finished(queued.headers["Location"]), 240, "the queued attack")
        assert attack_job["result"]["label_before"] == expected_whole
        assert attack_job["result"]["threshold_source"] == "checkpoint"
        purify_job = wait_for(lambda: finished(purify.headers["Location"]), 240, "the purification")
        verdict = purify_job["result"]["detectors"]["cal-whole"]
        assert (verdict["label_before"], verdict["threshold"]) == (expected_whole, straddling(p_whole))

    data = tmp_path / "data"
    for cls in ("fake", "real"):
        (data / cls).mkdir(parents=True)
        (data / cls / "x.png").write_bytes(image)
    out = tmp_path / "robust.json"
    assert cli(["robustness", str(whole), str(data), "--budget", "quick", "--eps", "1/255", "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["threshold"], record["threshold_source"]) == (straddling(p_whole), "checkpoint")
    correct = {r["label"]: r["clean_correct"] for r in record["per_image"]}
    assert correct == {"fake": expected_whole == "fake", "real": expected_whole == "real"}


@pytest.mark.e2e
def test_serve_starts_on_imported_detectors_alone(tmp_path: Path) -> None:
    ckpts = tmp_path / "mine"
    ckpts.mkdir()
    make_tiny_checkpoint(ckpts, "my-detector", seed=0)
    env = service_env(None, ckpts, DFG_EMBEDDED_REDIS_DIR=str(tmp_path / "redis"), DFG_EMBEDDED_WORKERS="1")
    env.pop("DFG_DEFAULT_MODEL", None)
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "deepfake_guard.cli", "serve", "--port", str(port)], env=env,
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 120, proc)
        resp = httpx.post(f"http://127.0.0.1:{port}/detect", files={"file": ("x.png", files.encode(
            files.gradient_rgb(), "PNG"))}, timeout=60)  # fmt: skip
        assert resp.status_code == 200 and resp.json()["model"]["name"] == "my-detector", resp.text
    finally:
        proc.terminate()
        proc.wait(30)
    assert "default detector 'my-detector': the only detector" in (tmp_path / "serve.log").read_text()

    env["DFG_DEFAULT_MODEL"] = "demo-resnet18"
    done = subprocess.run([sys.executable, "-m", "deepfake_guard.cli", "serve", "--port", str(free_port())], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "DFG_DEFAULT_MODEL='demo-resnet18' is not among the detectors found: my-detector" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_the_calibration_record_is_what_the_service_judges() -> None:
    """The two highest scores are reals, tied: no threshold at a score keeps the FPR under 5 %, so the fitted one
    sits just above them. It must do so in float32, where scores live: a float64 step above 0.95 rounds back onto
    the float32 score, and the record said FPR 0.08 where /detect calls both reals real."""
    reals = [0.1 + 0.01 * i for i in range(23)] + [0.95, 0.95]
    scores = torch.tensor([0.9, 0.8, *reals], dtype=torch.float32)
    labels = torch.tensor([0, 0] + [1] * len(reals))
    record = calibrate(scores, labels, None, None, target_fpr=0.05)
    t = record["threshold"]
    assert record["fitted_on"]["fpr"] == 0.0
    service = [float(p) >= t for p in scores[2:].tolist()]  # /detect: a Python float against the threshold
    tensor = (scores[2:] >= t).tolist()  # and a float32 tensor against it
    assert not any(service) and not any(tensor)


def test_calibration_refuses_too_few_reals() -> None:
    scores, labels = torch.tensor([0.9, 0.2, 0.3, 0.4]), torch.tensor([0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"3 real image.*needs at least 20"):
        calibrate(scores, labels, None, None, target_fpr=0.05)


def test_checkpoints_show_no_machine_paths(tmp_path: Path) -> None:
    src = tmp_path / "secret-home" / "detector.safetensors"
    src.parent.mkdir()
    make_tiny_checkpoint(tmp_path, "plain", seed=0)
    (tmp_path / "plain.safetensors").rename(src)
    data = tmp_path / "secret-home" / "val"
    for i, cls in enumerate(("fake", "real")):
        (data / cls).mkdir(parents=True)
        for j in range(3):
            rng = np.random.default_rng(10 * i + j)
            (data / cls / f"{j}.png").write_bytes(_png(Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8))))
    out = tmp_path / "out" / "mine"
    assert cli(["import-detector", str(src), "--arch", "vgg16_slim", "--fake-index", "0", "--input-size", "32", "32",
                "--out", str(out), "--eval", str(data)]) == 0  # fmt: skip
    text = (tmp_path / "out" / "mine.json").read_text()
    assert "secret-home" not in text, text
    assert public({"command": "x /home/me/a.pt --out=/srv/b"}) == {"command": "x a.pt --out=b"}


def test_eps_takes_fractions_on_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(files.encode(files.gradient_rgb(32, 32), "PNG"))
    out = tmp_path / "out"
    assert cli(["attack", str(tmp_path / "x.png"), "-o", str(out), "--method", "fgsm", "--eps", "4/255"]) == 0
    with pytest.raises(SystemExit) as exit_info:  # argparse's error line, not one batch run silently
        cli(["attack", str(tmp_path / "x.png"), "-o", str(out), "--method", "fgsm", "--batch", "0"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_robustness_refuses_a_batch_below_one(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["robustness", str(tmp_path / "x"), str(tmp_path), "--batch", bad])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_the_api_takes_eps_as_a_fraction(redis_url: str, tiny_checkpoints: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import Settings

    settings = Settings(checkpoints_dir=tiny_checkpoints, redis_url=redis_url, device="cpu")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        image = files.encode(files.gradient_rgb(32, 32), "PNG")
        resp = client.post("/attack", files={"file": ("x.png", image)}, data={"method": "fgsm", "eps": "4/255"})
        assert resp.status_code == 200, resp.text
        assert abs(resp.json()["linf"] - 4 / 255) < 1 / 255 + 1e-6
        bad = client.post("/attack", files={"file": ("x.png", image)}, data={"method": "fgsm", "eps": "4/0"})
        assert bad.status_code == 422 and "zero" in bad.text
