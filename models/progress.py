"""Progress reporting and cooperative cancellation for long loops (CW-L2, DIP).

Workers turn ``Progress`` into RQ job meta and ``should_stop`` into cancellation;
this module knows nothing about RQ (docs/CONTRIBUTING.md, convention 4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress report from an iterative algorithm."""

    iteration: int
    max_iterations: int
    loss: float
    psnr: float | None = None
    stage: str = ""


ProgressFn = Callable[[Progress], None]
StopFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised inside a long loop when its stop check returns True."""

    def __init__(self, iteration: int) -> None:
        super().__init__(f"cancelled at iteration {iteration}")
        self.iteration = iteration


def check_stop(should_stop: StopFn | None, iteration: int) -> None:
    """Raise ``Cancelled`` if the caller asked to stop."""
    if should_stop is not None and should_stop():
        raise Cancelled(iteration)
