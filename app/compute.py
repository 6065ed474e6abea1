"""Sharing the API process's compute between /detect and synchronous attacks, detection first.

/detect's micro-batcher and the attacks that run inside a request (within DFG_PGD_SYNC_MAX_STEPS and
DFG_CW_SYNC_MAX_STEPS) use the same detectors on the same device. With one plain lock, three CW-L2 requests took
a lone /detect from 0.06 s to 35 s: each held the lock for its whole run. Here an attack holds the compute only
between two forward passes of its detector: before each one it steps aside while a detection batch waits. And
attacks run in their own few threads (DFG_SYNC_ATTACK_THREADS), so that dozens of them cannot take every thread
of the server's pool that /detect needs to decode and resize its images. bench/sync_attacks.py measures it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from torch import Tensor, nn

T = TypeVar("T")

_local = threading.local()


class ComputeLock:
    """A lock with two kinds of holder: detection (``with lock:``) goes first; an attack (``attack()``) takes it
    only while no detection waits, and gives it up at its next forward pass when one does."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._detections_waiting = 0

    def __enter__(self) -> ComputeLock:
        with self._cond:
            self._detections_waiting += 1
            while self._busy:
                self._cond.wait()
            self._detections_waiting -= 1
            self._busy = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _acquire_behind_detections(self) -> None:
        with self._cond:
            while self._busy or self._detections_waiting:
                self._cond.wait()
            self._busy = True

    def step_aside(self) -> None:
        """Called by an attack's thread between forward passes: let every waiting detection batch run first."""
        with self._cond:
            if not self._detections_waiting:
                return
        self._release()
        self._acquire_behind_detections()

    @contextmanager
    def attack(self) -> Iterator[None]:
        """Hold the compute for an attack in this thread; its detectors' forward passes step aside for /detect."""
        self._acquire_behind_detections()
        _local.lock = self
        try:
            yield
        finally:
            _local.lock = None
            self._release()


def _step_aside_here() -> None:
    lock: ComputeLock | None = getattr(_local, "lock", None)
    if lock is not None:  # an attack's thread; /detect's batcher thread has none
        lock.step_aside()


def _before_forward(module: nn.Module, args: Any) -> None:
    _step_aside_here()


def _after_forward(module: nn.Module, args: Any, output: Any) -> None:
    # The backward pass of an attack step costs about two forward passes: step aside before it too, from a hook on
    # the output's gradient (a tensor hook, which in-place ReLUs inside the module do not disturb, unlike a module
    # backward hook). On the CPU autograd runs it in the attack's own thread; in any other thread it does nothing.
    if getattr(_local, "lock", None) is not None and isinstance(output, Tensor) and output.requires_grad:
        output.register_hook(_before_backward)


def _before_backward(grad: Tensor) -> None:
    _step_aside_here()


def yield_on_forward(module: nn.Module) -> None:
    """Make ``module``'s forward and backward passes step aside for detection when an attack thread runs them
    (a forward pre-hook, and a hook on the output's gradient: PyTorch's own extension points; a no-op in every
    other thread). Registered once per module."""
    if getattr(module, "_dfg_steps_aside", False):
        return
    module.register_forward_pre_hook(_before_forward)
    module.register_forward_hook(_after_forward)
    module._dfg_steps_aside = True  # type: ignore[assignment]


class AttackExecutor:
    """The threads synchronous attacks run in (DFG_SYNC_ATTACK_THREADS), apart from the server's thread pool."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync-attack")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
