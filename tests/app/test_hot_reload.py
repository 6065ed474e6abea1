"""Checkpoints added, replaced and removed while the API and a worker run (models/zoo.py, DFG_CHECKPOINTS_RELOAD_S):
real files in a tmp folder, the in-process API with its real lifespan, real Redis, the service's own worker class."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from redis import Redis

from core.settings import Settings
from models import checkpoint
from models.zoo import Zoo
from tests import imagefiles as files
from tests.app.test_api import assert_problem, make_client
from tests.conftest import make_tiny_checkpoint
from workers.worker import build_worker


def png() -> bytes:
    return files.encode(files.gradient_rgb(48, 40), "PNG")


def remove(folder: Path, name: str) -> None:
    for path in checkpoint.paths_for(folder / name):
        path.unlink()


def served(client: TestClient) -> dict[str, str]:
    return {m["name"]: m["sha256"] for m in client.get("/models").json()["models"]}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "checkpoints"
    d.mkdir()
    make_tiny_checkpoint(d, "tiny-vgg", arch="vgg16_slim", seed=0)
    return d


@pytest.fixture
def client(folder: Path, redis_url: str) -> Iterator[TestClient]:
    with make_client(folder, redis_url, checkpoints_reload_s=0, pgd_sync_max_steps=1) as c:
        yield c


def test_added_replaced_and_removed_checkpoints_are_served_without_a_restart(client: TestClient, folder: Path) -> None:
    assert list(served(client)) == ["tiny-vgg"]
    make_tiny_checkpoint(folder, "new", arch="resnet18", seed=1)
    first = served(client)["new"]
    resp = client.post("/detect", files={"file": ("a.png", png())}, data={"model": "new"})
    assert resp.status_code == 200 and resp.json()["model"]["sha256"] == first

    make_tiny_checkpoint(folder, "new", arch="resnet18", seed=2)  # replaced in place: new weights, new sha256
    second = served(client)["new"]
    assert second != first and second == checkpoint.sha256_file(folder / "new.safetensors")
    assert (
        client.post("/detect", files={"file": ("a.png", png())}, data={"model": "new"}).json()["model"]["sha256"]
        == second
    )

    remove(folder, "new")
    assert list(served(client)) == ["tiny-vgg"]
    resp = client.post("/detect", files={"file": ("a.png", png())}, data={"model": "new"})
    assert_problem(resp, 404, "its checkpoint was removed")


def test_a_removed_default_is_an_error_that_says_so(client: TestClient, folder: Path) -> None:
    make_tiny_checkpoint(folder, "other", arch="resnet18", seed=1)
    remove(folder, "tiny-vgg")
    resp = client.post("/detect", files={"file": ("a.png", png())})
    assert_problem(resp, 503, "the default detector 'tiny-vgg' (DFG_DEFAULT_MODEL) is no longer in")
    assert client.post("/detect", files={"file": ("a.png", png())}, data={"model": "other"}).status_code == 200


def test_a_broken_new_file_is_skipped_and_the_previous_version_kept(client: TestClient, folder: Path) -> None:
    before = served(client)["tiny-vgg"]
    (folder / "tiny-vgg.safetensors").write_bytes(b"not safetensors")  # a copy cut short, say
    (folder / "broken.safetensors").write_bytes(b"nope")
    (folder / "broken.json").write_text(json.dumps({"architecture": "resnet18"}))
    assert served(client) == {"tiny-vgg": before}
    assert client.post("/detect", files={"file": ("a.png", png())}).status_code == 200


def test_a_job_naming_a_removed_detector_fails_at_once_with_the_reason(client: TestClient, folder: Path) -> None:
    make_tiny_checkpoint(folder, "gone", arch="resnet18", seed=1)
    data = {"method": "pgd", "eps": "0.03", "steps": "5", "step_size": "0.01", "target": "gone"}
    resp = client.post("/attack", files={"file": ("a.png", png())}, data=data)
    assert resp.status_code == 202, resp.text
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert settings.redis_url is not None
    with Redis.from_url(settings.redis_url) as conn:
        worker = build_worker(settings, conn, Zoo.from_directory(folder, torch.device("cpu")))  # knows "gone"
        remove(folder, "gone")  # the job's own rescan must notice
        worker.work(burst=True, with_scheduler=False)
    info = client.get(f"/jobs/{resp.json()['id']}").json()
    assert info["status"] == "failed" and info["attempts"] == 1 and info["retries_left"] == 0, info
    assert "'gone' (its checkpoint was removed" in info["error"], info["error"]


def test_a_rescan_waits_for_its_interval(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path, "a", seed=0)
    zoo = Zoo.from_directory(tmp_path, torch.device("cpu"))
    make_tiny_checkpoint(tmp_path, "b", seed=1)
    assert not zoo.refresh(3600) and zoo.names() == ["a"]
    assert zoo.refresh(0) and zoo.names() == ["a", "b"]
    assert not zoo.refresh(0)  # nothing changed since
