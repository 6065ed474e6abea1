"""Dynamic micro-batching for /detect.

Concurrent requests are merged into one forward pass: one compute thread takes the first waiting
item and, without waiting any longer, drains whatever else is already queued (up to ``max_batch``).
An idle service therefore adds no latency to a lone request, and a busy one batches naturally,
at the size the load provides. Answers are handed to the waiting requests by a second thread, so the
compute thread goes straight from one batch's results to launching the next: on a GPU, the time spent
waking dozens of request threads (and their contention for the GIL) no longer leaves the device idle.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.checkpoint import LoadedCheckpoint
from models.detector import FAKE_INDEX


@dataclass
class _Item:
    loaded: LoadedCheckpoint
    batch: Tensor  # already resized and normalised: k x 3 x h x w on the model's device
    future: Future[list[float]] = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, *, lock: AbstractContextManager[object], max_batch: int = 64, precision: str = "fp32") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.max_batch = max_batch
        self.precision = precision
        self._lock = lock
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._answers: queue.Queue[tuple[list[_Item], list[float] | BaseException] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="detect-batcher", daemon=True)
        self._deliverer = threading.Thread(target=self._deliver, name="detect-answers", daemon=True)
        self._thread.start()
        self._deliverer.start()
        self.batches_run = 0
        self.images_run = 0
        #: Called after each forward pass with the detector's name and the images in it (the API's metrics).
        self.on_batch: Callable[[str, int], None] | None = None

    def submit(self, loaded: LoadedCheckpoint, batch: Tensor) -> Future[list[float]]:
        item = _Item(loaded, batch)
        self._queue.put(item)
        return item.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self._deliverer.join(timeout=10)

    def _drain(self, first: _Item) -> tuple[list[_Item], list[_Item]]:
        """Items for ``first``'s model up to max_batch images, and the rest (to run next)."""
        same, other = [first], []
        size = first.batch.shape[0]
        while size < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)
                break
            if nxt.loaded is first.loaded and tuple(nxt.batch.shape[1:]) == tuple(first.batch.shape[1:]):
                same.append(nxt)
                size += nxt.batch.shape[0]
            else:
                other.append(nxt)
        return same, other

    def _loop(self) -> None:
        pending: list[_Item] = []
        try:
            while True:
                first = pending.pop(0) if pending else self._queue.get()
                if first is None:
                    return
                items, rest = self._drain(first)
                pending.extend(rest)
                try:
                    probs: list[float] | BaseException = self._run(first.loaded, torch.cat([it.batch for it in items]))
                except Exception as exc:
                    probs = exc
                self._answers.put((items, probs))
        finally:
            self._answers.put(None)

    def _deliver(self) -> None:
        while (answer := self._answers.get()) is not None:
            items, probs = answer
            if isinstance(probs, BaseException):
                for it in items:
                    it.future.set_exception(probs)
                continue
            start = 0
            for it in items:
                k = it.batch.shape[0]
                it.future.set_result(probs[start : start + k])
                start += k

    def _run(self, loaded: LoadedCheckpoint, batch: Tensor) -> list[float]:
        cuda = batch.device.type == "cuda"
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and self.precision == "bf16" else nullcontext()
        with self._lock, torch.inference_mode(), autocast:
            logits = loaded.detector.classify(batch).float()
            probs = torch.softmax(logits, dim=1)[:, FAKE_INDEX].cpu().tolist()
        self.batches_run += 1
        self.images_run += batch.shape[0]
        if self.on_batch is not None:
            self.on_batch(loaded.name, int(batch.shape[0]))
        return [float(p) for p in probs]
