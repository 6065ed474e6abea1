"""DIP purifies ordinary photos of several sizes: queued through the jobs service and run by a real RQ worker
(in-process, burst mode) against the real Redis. A photo over DFG_PURIFY_MAX_SIDE is shrunk to DIP's working size,
and the antialiasing filter took pure white ~2e-7 above 1.0, which DIP's pixel check refused: the job failed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image
from redis import Redis
from rq.job import Job

from app import jobs
from core import keys
from core.settings import Settings
from models.zoo import Zoo
from workers.worker import build_worker


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


PHOTOS = {
    # skimage's coffee (600 x 400) at 1000 x 666: white highlights beside dark cup edges
    "coffee-1000x666": lambda: Image.fromarray(skimage.data.coffee()).resize((1000, 666), Image.Resampling.BICUBIC),
    "white-700x300": lambda: Image.new("RGB", (700, 300), (255, 255, 255)),
    "astronaut-512x512": lambda: Image.fromarray(skimage.data.astronaut()),  # at the working size: not resized
    "chelsea-451x300": lambda: Image.fromarray(skimage.data.chelsea()),
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread, as the service's workers run on this CPU (tests/conftest.py ``service_env``): the
    work horse RQ forks would otherwise wait on the parent's thread pool for a minute on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_dip_purifies_photos_of_several_sizes(tiny_checkpoints: Path, redis_url: str) -> None:
    settings = Settings(checkpoints_dir=tiny_checkpoints, redis_url=redis_url, default_model="tiny-vgg", device="cpu")  # type: ignore[arg-type]
    photos = {name: make() for name, make in PHOTOS.items()}
    with Redis.from_url(redis_url) as conn:
        queued = {
            name: jobs.enqueue(
                conn, settings, func=keys.PURIFY_FUNC, kind="purify", image=png(photo),
                params={"method": "dip", "max_iterations": 3, "stop": "fixed", "seed": i},  # no batch: one size each
            )[0].id
            for i, (name, photo) in enumerate(photos.items())
        }  # fmt: skip
        zoo = Zoo.from_directory(tiny_checkpoints, torch.device("cpu"))
        build_worker(settings, conn, zoo).work(burst=True, with_scheduler=False)  # one burst runs them all
        for name, job_id in queued.items():
            info = jobs.describe(Job.fetch(job_id, connection=conn), settings)
            assert info.status == "finished", (name, info.error)
            assert info.result is not None
            assert (info.result["width"], info.result["height"]) == photos[name].size, name
            assert max(info.result["work_size"]) == min(512, max(photos[name].size)), name
            assert info.progress is not None and info.progress.max_iterations == 3, name  # the plan's cap
