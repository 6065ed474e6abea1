"""Adding a method is one declaration: a toy attack and a toy purifier registered here, from this test module
alone, are served by /attack and /purify, documented in /openapi.json, listed and run by the CLI, and run by a
real RQ worker (docs/CONTRIBUTING.md)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from redis import Redis
from torch import Tensor, nn

from deepfake_guard.cli import main
from models import attacks
from models import purify as purifiers
from models.methods import Param
from models.progress import ProgressFn, StopFn
from models.purify import PurifyResult
from tests import imagefiles as files
from tests.app.test_api import assert_problem, make_client


def toy_brighten(model: nn.Module, x: Tensor, y: Tensor, *, strength: float, targeted: bool = False) -> Tensor:
    """Not an attack worth the name: every pixel brighter by ``strength`` (its effect is easy to check)."""
    spec = attacks.get("toy_brighten")
    strength = spec.check({"strength": strength})["strength"]
    return (x + strength).clamp(0, 1)


def toy_posterize(
    x: Tensor, *, levels: int = 4, progress: ProgressFn | None = None, should_stop: StopFn | None = None
) -> PurifyResult:
    levels = purifiers.get("toy_posterize").check({"levels": levels})["levels"]
    out = torch.round(x * (levels - 1)) / (levels - 1)
    return PurifyResult(out, "toy_posterize", (0,) * len(x), 0, "one-shot", 0.0, {"levels": levels})


@pytest.fixture
def toys() -> Iterator[None]:
    attacks.register(
        attacks.AttackSpec(
            name="toy_brighten",
            fn=toy_brighten,
            params=(Param("strength", float, "brightness added", default=0.25, low=0.0, high=1.0),),
            description="adds a constant brightness (a test fixture)",
        )
    )
    purifiers.register(
        purifiers.PurifierSpec(
            name="toy_posterize",
            fn=toy_posterize,
            params=(Param("levels", int, "grey levels per channel", default=4, low=2, high=16),),
            description="posterizes to a few levels (a test fixture)",
        )
    )
    try:
        yield
    finally:
        attacks.unregister("toy_brighten")
        purifiers.unregister("toy_posterize")


def pixels(data: bytes) -> Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).float()


def png(w: int = 48, h: int = 40) -> bytes:
    return files.encode(files.gradient_rgb(w, h), "PNG")


def test_toy_methods_are_served_and_documented(toys: None, tiny_checkpoints: Path, redis_url: str) -> None:
    with make_client(tiny_checkpoints, redis_url) as c:
        spec = c.get("/openapi.json").json()
        forms = {
            path: spec["components"]["schemas"][
                spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit(
                    "/", 1
                )[-1]
            ]["properties"]
            for path in ("/attack", "/purify")
        }
        assert "toy_brighten" in forms["/attack"]["method"]["enum"] and "strength" in forms["/attack"]
        assert forms["/attack"]["strength"]["anyOf"][0]["maximum"] == 1.0
        assert "toy_posterize" in forms["/purify"]["method"]["enum"] and "levels" in forms["/purify"]

        f = {"file": ("g.png", png())}
        body = c.post("/attack", files=f, data={"method": "toy_brighten", "strength": "0.1"}).json()
        assert body.get("linf") == pytest.approx(0.1, abs=1 / 255), body
        adv = pixels(base64.b64decode(body["adversarial"]))
        clean = pixels(png())
        assert float((adv - (clean + 25.5).clamp(max=255)).abs().max()) <= 1.0  # 0.1 x 255 brighter, clipped
        assert_problem(c.post("/attack", files=f, data={"method": "toy_brighten", "strength": "2"}), 422, "strength")
        assert_problem(c.post("/attack", files=f, data={"method": "toy_brighten", "eps": "0.1"}), 422, "['eps']")
        assert_problem(c.post("/attack", files=f, data={"method": "fgsm", "strength": "0.1"}), 422, "['strength']")

        queued = c.post("/purify", files=f, data={"method": "toy_posterize", "levels": "3"})
        assert queued.status_code == 202, queued.text
        info = c.get(queued.headers["location"]).json()
        assert info["params"] == {"method": "toy_posterize", "levels": 3}
        assert_problem(c.post("/purify", files=f, data={"method": "toy_posterize", "levels": "1"}), 422, "levels")
        run_queue_in_this_process(tiny_checkpoints, redis_url)
        done = c.get(queued.headers["location"]).json()
        assert done["status"] == "finished", done
        assert pixels(c.get(done["result_url"]).content).unique().numel() <= 3  # posterized to 3 levels by the worker


def run_queue_in_this_process(checkpoints: Path, redis_url: str) -> None:
    """A real RQ worker of the service's class, in this process: the toy purifier is registered here."""
    from core.settings import Settings
    from models.zoo import Zoo
    from workers.worker import build_worker

    settings = Settings(checkpoints_dir=checkpoints, redis_url=redis_url, default_model="tiny-vgg", device="cpu")  # type: ignore[arg-type]
    with Redis.from_url(redis_url) as conn:
        build_worker(settings, conn, Zoo.from_directory(checkpoints, torch.device("cpu"))).work(
            burst=True, with_scheduler=False
        )


def test_toy_methods_are_listed_and_run_by_the_cli(
    toys: None, tmp_path: Path, tiny_checkpoints: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("attack", "purify"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    shown = capsys.readouterr().out
    assert "toy_brighten" in shown and "--strength" in shown and "toy_posterize" in shown and "--levels" in shown
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "toy_brighten" in listed and "toy_posterize" in listed

    image = tmp_path / "in.png"
    image.write_bytes(png())
    out = tmp_path / "out.png"
    assert main(["purify", str(image), "-o", str(out), "--method", "toy_posterize", "--levels", "2"]) == 0
    assert pixels(out.read_bytes()).unique().numel() <= 2
    # A flag of another method is refused, naming it.
    assert main(["purify", str(image), "-o", str(out), "--method", "jpeg", "--levels", "2"]) == 2
    assert "--levels" in capsys.readouterr().out

    argv = ["attack", str(image), "-o", str(tmp_path / "adv"), "--target", "tiny-vgg"]
    argv += ["--checkpoints", str(tiny_checkpoints), "--device", "cpu", "--method", "toy_brighten", "--strength", "0.2"]
    assert main(argv) == 0
    rows = (tmp_path / "adv" / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[3] == "toy_brighten"


def test_the_methods_document_is_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/METHODS.md holds `deepfake-guard methods --markdown` (regenerate it with that command)."""
    assert main(["methods", "--markdown"]) == 0
    tables = capsys.readouterr().out
    doc = (Path(__file__).parents[1] / "docs" / "METHODS.md").read_text()
    assert tables in doc, "docs/METHODS.md is out of date: paste `deepfake-guard methods --markdown` into it"


def test_every_method_name_is_a_literal_of_its_declaration_only() -> None:
    """Adding a method touches one module: no other module of the project spells its name."""
    root = Path(__file__).parents[1]
    sources = [
        p for d in ("app", "core", "models", "workers", "deepfake_guard", "bench") for p in (root / d).rglob("*.py")
    ]
    for spec in [*attacks.ATTACKS_REGISTRY, *purifiers.PURIFIERS_REGISTRY]:
        literal = (f'"{spec.name}"', f"'{spec.name}'")
        holders = sorted(str(p.relative_to(root)) for p in sources if any(q in p.read_text() for q in literal))
        declared = Path(spec.fn.__code__.co_filename).resolve().relative_to(root.resolve())
        assert holders == [str(declared)], (spec.name, holders)
