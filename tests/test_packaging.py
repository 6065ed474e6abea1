"""An installed package (not the checkout) has everything `deepfake-guard serve` needs: the demo detectors ship
inside it as package data, so the service starts in any folder (README, "Settings": DFG_CHECKPOINTS_DIR)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_wheel_carries_the_code_and_the_demo_detectors(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("deepfake_guard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("demo-resnet18", "demo-vgg16"):
        assert (
            f"models/demo_checkpoints/{name}.safetensors" in names and f"models/demo_checkpoints/{name}.json" in names
        )
    for module in ("app/main.py", "core/settings.py", "workers/jobs.py", "models/methods.py", "deepfake_guard/cli.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith("tests/")]
