from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from models import checkpoint
from models.microbatch import MicroBatcher


def test_concurrent_requests_are_merged_and_answers_match_unbatched(tiny_checkpoints: Path) -> None:
    loaded = checkpoint.load(tiny_checkpoints / "tiny-vgg")
    lock = threading.Lock()
    batcher = MicroBatcher(lock=lock, max_batch=64)
    torch.manual_seed(0)
    inputs = [loaded.detector.preprocess(torch.rand(k, 3, 20 + k, 30)) for k in (1, 2, 1, 3, 1)]
    with torch.no_grad():
        expected = [torch.softmax(loaded.detector.backbone(b), 1)[:, 0].tolist() for b in inputs]
    with lock:  # hold the compute lock so that all submissions queue up behind the first
        futures = [batcher.submit(loaded, b) for b in inputs]
    results = [f.result(timeout=30) for f in futures]
    batcher.close()
    for got, want in zip(results, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    assert batcher.images_run == 8
    assert batcher.batches_run <= 2  # the first alone (it grabbed the queue at once), then the rest merged


def test_batches_respect_max_batch_and_separate_models(tiny_checkpoints: Path) -> None:
    a = checkpoint.load(tiny_checkpoints / "tiny-vgg")
    b = checkpoint.load(tiny_checkpoints / "tiny-resnet")
    lock = threading.Lock()
    batcher = MicroBatcher(lock=lock, max_batch=2)
    x = a.detector.preprocess(torch.rand(1, 3, 32, 32))
    with lock:
        futures = [batcher.submit(m, x) for m in (a, b, a, b, a)]
    results = [f.result(timeout=30) for f in futures]
    batcher.close()
    assert results[0] == pytest.approx(results[2], abs=1e-6)
    assert results[0] == pytest.approx(results[4], abs=1e-6)
    assert results[1] == pytest.approx(results[3], abs=1e-6)
    assert results[0] != pytest.approx(results[1], abs=1e-6)  # each model answered its own items
    assert batcher.batches_run >= 3  # 3 images of model a need at least 2 batches of 2, plus model b


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lock=threading.Lock(), max_batch=0)
    with pytest.raises(ValueError, match="fp16"):
        MicroBatcher(lock=threading.Lock(), precision="fp16")


def test_a_failing_batch_fails_its_requests_only(tiny_checkpoints: Path) -> None:
    loaded = checkpoint.load(tiny_checkpoints / "tiny-vgg")
    batcher = MicroBatcher(lock=threading.Lock(), max_batch=8)
    bad = batcher.submit(loaded, torch.rand(1, 5, 32, 32))  # five channels: the backbone raises
    with pytest.raises(RuntimeError):
        bad.result(timeout=30)
    good = batcher.submit(loaded, loaded.detector.preprocess(torch.rand(2, 3, 32, 32)))
    assert len(good.result(timeout=30)) == 2  # the batcher goes on after a failure
    batcher.close()
    assert not batcher._thread.is_alive() and not batcher._deliverer.is_alive()
