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
import contextlib
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


class AttackThreadsBusy(Exception):
    """No synchronous attack thread became free within the wait allowed (DFG_SYNC_ATTACK_WAIT_S)."""


class AttackExecutor:
    """The threads synchronous attacks run in (DFG_SYNC_ATTACK_THREADS), apart from the server's thread pool.

    A request waits for a free thread at most ``wait_s`` (DFG_SYNC_ATTACK_WAIT_S; the route then queues the attack
    as a job): the pool's own queue would make the twentieth of twenty concurrent requests wait for all the
    others. A thread counts as taken until its attack returns, even when the request that started it is gone."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sync-attack")
        self._free: asyncio.Semaphore | None = None  # made in the server's event loop, on first use

    async def run(self, fn: Callable[..., T], *args: Any, wait_s: float | None = None) -> T:
        if self._free is None:
            self._free = asyncio.Semaphore(self._threads)
        free, loop = self._free, asyncio.get_running_loop()
        if not free.locked():
            await free.acquire()  # a thread is free: no wait (wait_for with a 0 s timeout would not even try)
        else:
            try:
                await asyncio.wait_for(free.acquire(), wait_s)
            except TimeoutError:
                raise AttackThreadsBusy(f"no attack thread became free within {wait_s} s") from None

        def release(_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the server's loop closed at shutdown
                loop.call_soon_threadsafe(free.release)

        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            free.release()
            raise
        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
