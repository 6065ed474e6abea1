"""Label-free early stopping for DIP: windowed moving variance (ES-WMV, Wang et al. 2021).

Why: DIP first fits the image content and only later the high-frequency perturbation (docs/PAPER.md,
"Why DIP works"); the paper picked its stop (6,000 steps) on the test images themselves. ES-WMV needs
no clean image and no labels: while the net is fitting content, successive outputs change a lot; once
content is fitted they settle; when the net starts to fit the perturbation they drift again. The
variance of the outputs over a sliding window therefore has a U shape whose minimum sits near the
best reconstruction. We stop ``patience`` iterations after the last new minimum and return the
output recorded at that minimum.

Everything here stays on the device: ``observe`` never synchronises; only reading ``done`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class WMVConfig:
    """Windowed-moving-variance stop.

    ``window`` iterations of raw outputs are summarised by ``window // stride`` samples (one every
    ``stride`` iterations), which keeps memory at a few images per purified image even at 512 px.
    """

    window: int = 100
    stride: int = 10
    patience: int = 500
    min_iterations: int = 300

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.window < 2 * self.stride:
            raise ValueError(f"window must be >= 2 * stride, got window={self.window}, stride={self.stride}")
        if self.patience < self.stride:
            raise ValueError(f"patience must be >= stride, got {self.patience}")
        if self.min_iterations < 0:
            raise ValueError(f"min_iterations must be >= 0, got {self.min_iterations}")

    @property
    def samples(self) -> int:
        return self.window // self.stride


class WindowedVariance:
    """Tracks, per image, the windowed variance of the outputs and the candidate at its minimum.

    Call ``observe(iteration, output, candidate)`` every ``config.stride`` iterations. ``output`` is the
    raw network output whose variance is measured; ``candidate`` is what would be returned if this
    iteration turns out to be the minimum (the EMA-smoothed output in DIP). Images whose stop has fired
    are frozen: later observations do not change their ``best_image``.
    """

    def __init__(self, config: WMVConfig, like: Tensor) -> None:
        n = like.shape[0]
        self.config = config
        self._buffer = torch.zeros((config.samples, *like.shape), dtype=like.dtype, device=like.device)
        self._count = 0
        self.best_variance = torch.full((n,), float("inf"), device=like.device)
        self.best_iteration = torch.zeros(n, dtype=torch.long, device=like.device)
        self.best_image = like.detach().clone()
        self.frozen = torch.zeros(n, dtype=torch.bool, device=like.device)
        self.last_variance: Tensor | None = None

    def observe(self, iteration: int, output: Tensor, candidate: Tensor) -> None:
        cfg = self.config
        self._buffer[self._count % cfg.samples].copy_(output.detach())
        self._count += 1
        if self._count < cfg.samples:
            return
        variance = self._buffer.var(dim=0, unbiased=False).flatten(1).mean(dim=1)
        self.last_variance = variance
        better = (variance < self.best_variance) & ~self.frozen
        self.best_variance = torch.where(better, variance, self.best_variance)
        self.best_iteration = torch.where(better, torch.full_like(self.best_iteration, iteration), self.best_iteration)
        self.best_image = torch.where(better.view(-1, 1, 1, 1), candidate.detach(), self.best_image)
        self.frozen |= (iteration - self.best_iteration >= cfg.patience) & (iteration >= cfg.min_iterations)
        self.frozen &= torch.isfinite(self.best_variance)

    def done(self) -> Tensor:
        """Per-image flag (a device tensor): the stop has fired."""
        return self.frozen
