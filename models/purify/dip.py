"""Deep Image Prior purification (Ulyanov et al. 2018) as the paper uses it against adversarial noise.

A randomly initialised skip network maps fixed noise to the attacked image. It fits image content
before the high-frequency perturbation (docs/PAPER.md, "Why DIP works"), so an output taken mid-way is
the image with the attack largely removed. ``dip_purify`` runs one independent network per image
(batched as grouped convolutions, see ``skipnet``), with the paper's noise jitter, EMA of outputs and
PSNR backtracking, and either a fixed step count (``paper`` preset) or a label-free stop (``default``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from models.methods import Param
from models.progress import Progress, ProgressFn, StopFn, check_stop
from models.purify.engine import DipRuntime, StepSetup, dip_psnr, make_stepper
from models.purify.registry import PurifierSpec, register
from models.purify.skipnet import SkipConfig, SkipNet
from models.purify.stopping import WindowedVariance, WMVConfig

StopMode = Literal["auto", "fixed"]


@dataclass
class PurifyResult:
    """What every purifier returns.

    ``iterations`` holds, per image, the iteration whose output was returned (0 for one-shot
    purifiers); ``steps`` is how many optimisation steps ran in total. ``psnr_trace`` maps an
    iteration to the per-image PSNR (dB) of the returned-so-far output to the input; ``stop_trace``
    maps an iteration to the per-image windowed variance used by the auto stop.
    """

    image: Tensor
    method: str
    iterations: tuple[int, ...]
    steps: int
    stopped_by: str
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    psnr_trace: dict[int, list[float]] = field(default_factory=dict)
    stop_trace: dict[int, list[float]] = field(default_factory=dict)
    snapshots: dict[int, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class DipPreset:
    """Every DIP hyper-parameter in one place; presets are instances of this."""

    name: str
    net: SkipConfig = field(default_factory=SkipConfig)
    lr: float = 0.01
    noise_scale: float = 0.1  # input noise ~ U(0, noise_scale)
    jitter_std: float = 1.0 / 30  # fresh N(0, jitter_std^2) added to the input every step
    ema: float = 0.99  # the returned image is the EMA of outputs
    backtrack_db: float = 5.0  # a PSNR fall larger than this restores the last good state
    backtrack_every: int = 10
    max_iterations: int = 6000
    stop: StopMode = "fixed"
    stopping: WMVConfig = field(default_factory=WMVConfig)

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if self.backtrack_every < 1:
            raise ValueError(f"backtrack_every must be >= 1, got {self.backtrack_every}")
        if self.stop not in ("auto", "fixed"):
            raise ValueError(f"stop must be 'auto' or 'fixed', got {self.stop!r}")
        if self.noise_scale < 0 or self.jitter_std < 0:
            raise ValueError(f"noise_scale and jitter_std must be >= 0, got {self.noise_scale}, {self.jitter_std}")


PRESETS: dict[str, DipPreset] = {
    # The paper's settings (docs/PAPER.md "Settings they used") with its chosen stop at 6,000 steps.
    "paper": DipPreset(name="paper"),
    # Same network and optimiser, stopped by ES-WMV with a 3,000-step cap (docs/PURIFICATION.md).
    "default": DipPreset(name="default", max_iterations=3000, stop="auto"),
    # Fixed 1,000 steps: where restoration peaked on the demo *validation* split (64 px, FGSM eps 0.02), and on
    # the test split it restored more fooled fakes than the paper's 6,000 with as many reals kept
    # (docs/PURIFICATION.md). Calibrated at 64 px: larger images fit their content more slowly.
    "early": DipPreset(name="early", max_iterations=1000, stop="fixed"),
}

STOP_CHECK_EVERY = 10  # a cancellation lands within this many steps (milliseconds on a GPU)
TRACE_EVERY = 50


psnr = dip_psnr


def _pad_to(x: Tensor, multiple: int, minimum: int) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad bottom/right to a multiple of the network's stride (and its minimum size)."""
    h, w = x.shape[-2:]
    ph = max(minimum, -(-h // multiple) * multiple) - h
    pw = max(minimum, -(-w // multiple) * multiple) - w
    # Reflection needs pad < size; repeat it for tiny images rather than fall back to zeros.
    while ph > 0 or pw > 0:
        step_h, step_w = min(ph, x.shape[-2] - 1), min(pw, x.shape[-1] - 1)
        if step_h == 0 and step_w == 0:  # a 1-pixel side cannot be reflected
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            break
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        ph, pw = ph - step_h, pw - step_w
    return x, (h, w)


def resample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` (3 x H x W in [0, 1]) resized to ``size`` (bilinear, antialiased when shrinking), clamped to [0, 1]:
    the antialiasing filter has negative lobes and a white highlight comes out ~2e-7 above 1.0, which
    ``check_images`` would refuse."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    out = F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    return out.clamp(0, 1)


def check_images(x: Tensor) -> None:
    """Validate the pixel contract (docs/CONTRIBUTING.md, convention 1) with a message naming what is wrong."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] < 1:
        raise ValueError(f"expected images N x 3 x H x W with N >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor in [0, 1], got dtype {x.dtype}")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0.0 or hi > 1.0 or not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"pixel values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")


def resolve_preset(preset: str | DipPreset, *, max_iterations: int | None, stop: StopMode | None) -> DipPreset:
    if isinstance(preset, DipPreset):
        chosen = preset
    elif preset in PRESETS:
        chosen = PRESETS[preset]
    else:
        raise ValueError(f"unknown DIP preset {preset!r}; choose one of {sorted(PRESETS)}")
    if max_iterations is not None:
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise ValueError(f"max_iterations must be a positive integer, got {max_iterations!r}")
        chosen = replace(chosen, max_iterations=max_iterations)
    if stop is not None:
        if stop not in ("auto", "fixed"):
            raise ValueError(f"stop must be 'auto' or 'fixed', got {stop!r}")
        chosen = replace(chosen, stop=stop)
    return chosen


def build_setup(x: Tensor, cfg: DipPreset, *, seed: int, device: torch.device) -> StepSetup:
    """The network, noise and target of a DIP run on ``x``: all that depends on the seed, nothing on the engine."""
    net_cfg = cfg.net
    target, (h, w) = _pad_to(x.detach().to(device, torch.float32), net_cfg.multiple, net_cfg.min_size)
    hp, wp = target.shape[-2:]
    init_gen = torch.Generator(device="cpu").manual_seed(seed)
    net = SkipNet(net_cfg, replicas=x.shape[0])
    net.reset_parameters_(init_gen)
    net.to(device).train()
    # One noise draw shared by all replicas, so an image's result does not depend on its batch mates or their
    # number (bit-identical for any batch of two or more). A batch of one runs dense instead of grouped
    # convolutions: the same network, other float rounding, which the optimisation amplifies (not bit-identical).
    base_noise = (torch.rand((1, net_cfg.input_channels, hp, wp), generator=init_gen) * cfg.noise_scale).to(device)
    return StepSetup(
        net=net,
        base_noise=base_noise,
        target=target,
        crop=(h, w),
        jitter_std=cfg.jitter_std,
        lr=cfg.lr,
        ema_decay=cfg.ema,
        backtrack_db=cfg.backtrack_db,
        backtrack_every=cfg.backtrack_every,
        jitter_generator=torch.Generator(device=device).manual_seed(seed),
    )


def dip_purify(
    x: Tensor,
    *,
    preset: str | DipPreset = "default",
    max_iterations: int | None = None,
    stop: StopMode | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    device: str | torch.device | None = None,
    progress_every: int = 25,
    snapshots: tuple[int, ...] = (),
    runtime: DipRuntime | None = None,
) -> PurifyResult:
    """Purify ``x`` (N x 3 x H x W in [0, 1]) with one Deep Image Prior network per image.

    ``stop`` overrides the preset's ("fixed": run ``max_iterations`` steps and return the EMA output;
    "auto": ES-WMV, see ``models.purify.stopping``). The same ``seed`` gives the same output on the
    same device; each image's result does not depend on the others in the batch. ``snapshots`` lists
    iterations at which to keep a copy of the returned-so-far output (for studies of the stop).
    ``runtime`` chooses how the steps execute (``models.purify.engine.DipRuntime``: the fast engine by
    default, CUDA graphs on CUDA; ``engine="reference"`` is the plain eager loop it is checked against).
    Raises ``models.progress.Cancelled`` when ``should_stop`` returns True.
    """
    started = time.perf_counter()
    DIP.check({"max_iterations": max_iterations, "stop": stop, "seed": seed, "progress_every": progress_every})
    if not isinstance(preset, DipPreset):
        DIP.check({"preset": preset})
    check_images(x)
    cfg = resolve_preset(preset, max_iterations=max_iterations, stop=stop)
    dev = torch.device(device) if device is not None else x.device
    n = x.shape[0]

    setup = build_setup(x, cfg, seed=seed, device=dev)
    target, (h, w) = setup.target, setup.crop
    cropped = target[..., :h, :w]
    stepper = make_stepper(setup, runtime or DipRuntime())

    # Tracked in fixed mode too: the variance trace is what a study of the stop needs.
    stopper = WindowedVariance(cfg.stopping, cropped)
    auto = cfg.stop == "auto"
    psnr_trace: dict[int, list[float]] = {}
    stop_trace: dict[int, list[float]] = {}
    kept: dict[int, Tensor] = {}
    wanted = set(snapshots)
    step = 0
    ema = stepper.ema

    for step in range(1, cfg.max_iterations + 1):
        if step == 1 or step % STOP_CHECK_EVERY == 0:
            check_stop(should_stop, step)
        out, per_image = stepper.step(step)
        result_now = ema[..., :h, :w]

        if step % cfg.stopping.stride == 0:
            stopper.observe(step, out[..., :h, :w], result_now)
            if step % TRACE_EVERY == 0 and stopper.last_variance is not None:
                stop_trace[step] = stopper.last_variance.tolist()
            if auto and bool(stopper.done().all()):
                break
        if step % TRACE_EVERY == 0:
            psnr_trace[step] = psnr(result_now, cropped).tolist()
        if step in wanted:
            kept[step] = result_now.clone().to(x.device)
        if progress is not None and (step % progress_every == 0 or step == cfg.max_iterations):
            progress(
                Progress(
                    iteration=step,
                    max_iterations=cfg.max_iterations,
                    loss=float(per_image.mean()),
                    psnr=float(psnr(result_now, cropped).mean()),
                    stage="dip",
                )
            )

    if auto:
        done = stopper.done()
        final = torch.where(done.view(n, 1, 1, 1), stopper.best_image, ema[..., :h, :w])
        iterations = tuple(
            int(i) if d else step for i, d in zip(stopper.best_iteration.tolist(), done.tolist(), strict=True)
        )
        stopped_by = "auto" if bool(done.all()) else "max_iterations"
    else:
        final = ema[..., :h, :w]
        iterations = (step,) * n
        stopped_by = "fixed"
    return PurifyResult(
        image=final.clamp(0, 1).to(x.device, x.dtype),
        method="dip",
        iterations=iterations,
        steps=step,
        stopped_by=stopped_by,
        seconds=time.perf_counter() - started,
        params={
            "preset": cfg.name,
            "max_iterations": cfg.max_iterations,
            "stop": cfg.stop,
            "seed": seed,
            "runtime": stepper.notes,
            "backtracks": stepper.restores.tolist(),
        },
        psnr_trace=psnr_trace,
        stop_trace=stop_trace,
        snapshots=kept,
    )


def _steps(params: Mapping[str, Any]) -> int:
    """The steps a run with resolved ``params`` may take: its ``max_iterations``, else its preset's."""
    preset = params.get("preset", "default")
    return resolve_preset(preset, max_iterations=params.get("max_iterations"), stop=None).max_iterations


DIP = register(
    PurifierSpec(
        name="dip",
        fn=dip_purify,
        params=(
            Param("preset", str, "DIP preset (docs/PURIFICATION.md)", default="default", choices=tuple(PRESETS)),
            Param("max_iterations", int, "iteration cap (the preset's if unset)", low=1, nullable=True),
            Param("stop", str, "stopping rule (the preset's if unset)", choices=("fixed", "auto"), nullable=True),
            Param("seed", int, "seeds the network and its input noise", default=0, low=0, high=2**31 - 1),
            Param("progress_every", int, "steps between progress reports", low=1, public=False),
        ),
        description="Deep Image Prior: a fresh network fits the image and is stopped before it fits the attack",
        iterative=True,
        batchable=True,
        iterations_param="max_iterations",
        steps=_steps,
    )
)
