"""Detectors from torchvision and timm, trained elsewhere with fake at index 1, imported and served over real HTTP.

Each architecture is randomly initialised with a fixed seed, saved as safetensors and as a ``.pth`` state dict with
DataParallel's ``module.`` prefixes, imported (models/importing.py), and served by one API process (uvicorn on
loopback, real Redis) from one checkpoint folder. /detect on an image already at the input size must give the
plain PyTorch model's softmax for "fake" (column 1) to 1e-5; /attack FGSM and CW-L2 must report the p_fake that
/detect then gives for the returned file (to 1e-4). Input sizes are the smallest each network handles, for speed.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from deepfake_guard.embedded import EmbeddedRedis
from models import importing, registry
from models.images import decode_image
from tests import imagefiles as files
from tests.conftest import Processes, service_env

FAST = [("torchvision:resnet50", 32), ("torchvision:convnext_tiny", 32), ("torchvision:efficientnet_b0", 32)]
HEAVY = [("timm:legacy_xception", 71), ("timm:tf_efficientnet_b4", 32)]
FORMATS = ("safetensors", "pth")


def slug(arch: str, fmt: str) -> str:
    return f"{arch.replace(':', '-').replace('_', '-')}-{fmt}"


def plain_net(arch: str) -> nn.Module:
    torch.manual_seed(1234)
    return registry.get(arch).builder(2).eval()


def plain_p_fake(net: nn.Module, arch: str, x: torch.Tensor) -> float:
    """What the owner's own code computes: normalise, forward, softmax, take the fake column (1)."""
    spec = registry.get(arch)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        return float(torch.softmax(net((x[None] - mean) / std), dim=1)[0, 1])


def noise_png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return files.encode(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), "PNG")


def import_both(arch: str, size: int, work: Path, out: Path) -> None:
    state = plain_net(arch).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(work / "src.safetensors"))
    torch.save({f"module.{k}": v for k, v in state.items()}, work / "src.pth")
    for fmt in FORMATS:
        done = importing.import_detector(work / f"src.{fmt}", architecture=arch, fake_index=1, input_size=(size, size))
        importing.write(done, out / slug(arch, fmt), command="tests/app/test_imported_detectors_api.py", argv=[])


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis) -> Iterator[dict[str, str]]:
    """``serve(group)`` -> base URL of one API serving every architecture of the group (built once per module)."""
    started: dict[str, str] = {}
    procs: list[Processes] = []

    def start(group: str, archs: list[tuple[str, int]]) -> str:
        if group not in started:
            folder = tmp_path_factory.mktemp(f"imported-{group}")
            for arch, size in archs:
                import_both(arch, size, tmp_path_factory.mktemp("src"), folder)
            p = Processes(tmp_path_factory.mktemp("logs"))
            procs.append(p)
            env = service_env(redis_server.url, folder, DFG_DEFAULT_MODEL=slug(archs[0][0], "safetensors"))
            started[group] = p.api(env)
        return started[group]

    yield start  # type: ignore[misc]
    for p in procs:
        p.stop()


CASES = [pytest.param(a, s, "fast", id=a) for a, s in FAST] + [
    pytest.param(a, s, "heavy", id=a, marks=pytest.mark.slow) for a, s in HEAVY
]


@pytest.mark.e2e
@pytest.mark.parametrize(("arch", "size", "group"), CASES)
def test_imported_detector_serves_the_plain_models_p_fake_and_attacks_consistently(
    serve, arch: str, size: int, group: str
) -> None:  # type: ignore[no-untyped-def]
    base = serve(group, FAST if group == "fast" else HEAVY)
    net = plain_net(arch)
    image = noise_png(size, seed=7)
    expected = plain_p_fake(net, arch, decode_image(image))
    with httpx.Client(base_url=base, timeout=300) as http:
        models = {m["name"]: m for m in http.get("/models").json()["models"]}
        for fmt in FORMATS:
            name = slug(arch, fmt)
            info = models[name]
            assert (info["fake_index"], info["logits"], info["resize"]) == (1, 2, "resize"), info
            assert tuple(info["input_size"]) == (size, size) and info["architecture"] == arch
            resp = http.post("/detect", files={"file": ("x.png", image)}, data={"model": name})
            assert resp.status_code == 200, resp.text
            got = resp.json()["results"][0]["p_fake"]
            assert abs(got - expected) <= 1e-5, (name, got, expected)
            for data in ({"method": "fgsm", "eps": "0.03"},
                         {"method": "cw_l2", "search_steps": "1", "max_iterations": "5", "lr": "0.05"}):  # fmt: skip
                resp = http.post("/attack", files={"file": ("x.png", image)}, data={**data, "target": name})
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert abs(body["p_fake_before"] - expected) <= 1e-5, (name, data, body["p_fake_before"])
                adv = base64.b64decode(body["adversarial"])
                again = http.post("/detect", files={"file": ("adv.png", adv)}, data={"model": name}).json()
                assert abs(body["p_fake_after"] - again["results"][0]["p_fake"]) <= 1e-4, (name, data)
                assert body["success"] == (body["label_after"] != body["label_before"])
