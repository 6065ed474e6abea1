"""How one DIP optimisation step is executed: the eager reference and the fast engine.

Both compute the same step (``dip.py`` owns the loop, the stop and the traces):
jittered noise -> skip net -> per-image MSE -> backward -> every ``backtrack_every`` steps the per-image
PSNR backtracking -> Adam -> EMA of outputs.

Why a second engine: at the paper's 512 x 512 one step is ~11 GFLOP but hundreds of tiny
kernels, so an eager step costs ~16 ms of host time on CPU and GPU alike while the arithmetic needs
~0.15 ms. The fast engine

* keeps every parameter (and its gradient) as a view into one flat buffer, so Adam, zeroing and
  backtracking are a handful of kernels instead of ~100 per parameter tensor;
* on CUDA, records the whole step (forward, backward, backtracking, Adam, EMA) as CUDA graphs and
  replays them, so a step costs one launch of host time (``cuda_graphs``);
* passes the input noise, identical for every replica, once (``shared_input``): the first layer is then one
  dense convolution instead of a grouped one over replicated 32-channel full-resolution copies;
* can run the network in bf16 autocast (``precision="bf16"``; parameters, Adam and the loss stay fp32)
  and in channels_last layout (``channels_last``).

The jitter is drawn outside the graph from the same generator as the reference, so with fp32 the two
engines follow the same trajectory up to float rounding (tests/models/test_dip_engine.py).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from models import images
from models.purify.skipnet import SkipNet

log = logging.getLogger(__name__)

Engine = Literal["reference", "fast"]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class DipRuntime:
    """How DIP runs (not what it computes: that is the preset). Ignored options cost nothing."""

    engine: Engine = "fast"
    precision: Precision = "fp32"
    channels_last: bool = False
    cuda_graphs: bool = True  # CUDA only; falls back to eager (and says so) if capture fails
    # Feed the replicas one shared copy of the input noise (the first layer becomes one dense convolution,
    # skipnet._GroupedConv); off: each replica gets its own copy, the reference's float rounding exactly.
    shared_input: bool = True
    warmup_steps: int = 3  # eager steps before the first capture (lazy cuDNN/autograd set-up)

    def __post_init__(self) -> None:
        if self.engine not in ("reference", "fast"):
            raise ValueError(f"engine must be 'reference' or 'fast', got {self.engine!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.engine == "reference" and (self.precision != "fp32" or self.channels_last):
            raise ValueError("the reference engine runs fp32 NCHW only; use engine='fast' for bf16 or channels_last")
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")


def dip_psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB, capped at 120 dB: backtracking compares drops, and inf - 5 dB is no drop."""
    return images.psnr(a, b, min_mse=1e-12)


@dataclass(frozen=True)
class StepSetup:
    """What both engines need to know about the problem."""

    net: SkipNet
    base_noise: Tensor  # 1 x C x H x W (shared by every replica)
    target: Tensor  # n x 3 x H x W, padded
    crop: tuple[int, int]  # the image's own h, w inside the padding
    jitter_std: float
    lr: float
    ema_decay: float
    backtrack_db: float
    backtrack_every: int
    jitter_generator: torch.Generator


class ReferenceStepper:
    """The plain eager step: torch.optim.Adam over the network's own parameters."""

    def __init__(self, s: StepSetup) -> None:
        self.s = s
        self.n = s.target.shape[0]
        self.params = list(s.net.parameters())
        self.optimiser = torch.optim.Adam(self.params, lr=s.lr)
        self.ema = torch.empty_like(s.target)
        self.last_psnr = torch.full((self.n,), -float("inf"), device=s.target.device)
        self.restores = torch.zeros(self.n, dtype=torch.long, device=s.target.device)
        self.saved: list[Tensor] | None = None
        self.cropped = s.target[..., : s.crop[0], : s.crop[1]]
        self.notes: dict[str, Any] = {"engine": "reference"}

    def step(self, step: int) -> tuple[Tensor, Tensor]:
        s, n = self.s, self.n
        jitter = torch.randn(s.base_noise.shape[1:], generator=s.jitter_generator, device=s.target.device)
        out = s.net((s.base_noise + jitter * s.jitter_std).expand(n, -1, -1, -1))
        per_image = (out - s.target).pow(2).flatten(1).mean(dim=1)
        self.optimiser.zero_grad(set_to_none=False)
        per_image.sum().backward()  # a sum keeps each replica's gradient that of its own MSE
        out = out.detach()
        dropped: Tensor | None = None
        if step > 1 and step % s.backtrack_every == 0:
            current = dip_psnr(out[..., : s.crop[0], : s.crop[1]], self.cropped)
            state = [self.optimiser.state[p] for p in self.params]
            live = self.params + [st["exp_avg"] for st in state] + [st["exp_avg_sq"] for st in state] + [self.ema]
            if self.saved is None:
                self.saved = [t.detach().clone() for t in live]
            dropped = backtrack_(live, self.saved, current, self.last_psnr, drop_db=s.backtrack_db)
            self.restores += dropped
            with torch.no_grad():
                # A restored image takes no gradient from the output it diverged to.
                for p in self.params:
                    if p.grad is not None:
                        p.grad.view(n, -1).masked_fill_(dropped.view(n, 1), 0.0)
        self.optimiser.step()
        _update_ema_(self.ema, out, first=step == 1, decay=s.ema_decay, dropped=dropped)
        return out, per_image.detach()


@torch.no_grad()
def backtrack_(
    live: list[Tensor],
    saved: list[Tensor],
    current_psnr: Tensor,
    last_psnr: Tensor,
    *,
    drop_db: float,
) -> Tensor:
    """Per-image backtracking: restore the last good state where PSNR fell by more than ``drop_db``.

    Every tensor in ``live`` and ``saved`` has the image (replica) index first when viewed as
    ``(n, -1)``. Images whose ``current_psnr`` fell more than ``drop_db`` below ``last_psnr`` get
    ``live <- saved``; the others are checkpointed (``saved <- live``) and their ``last_psnr`` updated.
    Runs on the device without synchronising; returns the per-image mask of restored images.
    """
    n = current_psnr.shape[0]
    dropped = current_psnr < last_psnr - drop_db
    keep = dropped.view(n, 1)
    for cur, old in zip(live, saved, strict=True):
        cur_rows, old_rows = cur.view(n, -1), old.view(n, -1)
        cur_rows.copy_(torch.where(keep, old_rows, cur_rows))
        old_rows.copy_(cur_rows)
    last_psnr.copy_(torch.where(dropped, last_psnr, current_psnr))
    return dropped


@torch.no_grad()
def _update_ema_(ema: Tensor, out: Tensor, *, first: bool, decay: float, dropped: Tensor | None) -> None:
    if first:
        ema.copy_(out)
    elif dropped is None:
        ema.mul_(decay).add_(out, alpha=1.0 - decay)
    else:
        blended = ema * decay + out * (1.0 - decay)
        ema.copy_(torch.where(dropped.view(-1, 1, 1, 1), ema, blended))


def _channels_last_strides(shape: torch.Size) -> tuple[int, ...]:
    _, c, h, w = shape
    return (c * h * w, 1, w * c, c)


class FlatParameters:
    """Every parameter of ``net`` re-pointed at a view of one flat buffer (and its gradient likewise).

    Parameter tensors of the grouped skip net have the replica index outermost, so each replica owns
    one contiguous run of every parameter; ``replica_of[i]`` names the replica of flat element ``i``.
    """

    def __init__(self, net: SkipNet, *, channels_last: bool) -> None:
        params = list(net.parameters())
        device = params[0].device
        total = sum(p.numel() for p in params)
        self.data = torch.zeros(total, device=device, requires_grad=True)
        self.grad = torch.zeros(total, device=device)
        self.data.grad = self.grad
        replicas = net.replicas
        owners = []
        offset = 0
        for p in params:
            count = p.numel()
            strides = _channels_last_strides(p.shape) if channels_last and p.dim() == 4 else p.contiguous().stride()
            view = self.data.detach().as_strided(p.shape, strides, offset)
            view.copy_(p.detach())
            p.data = view
            p.grad = self.grad.as_strided(p.shape, strides, offset)
            owners.append(torch.arange(replicas, device=device, dtype=torch.int32).repeat_interleave(count // replicas))
            offset += count
        self.replica_of = torch.cat(owners)  # int32: 4 bytes per parameter per image (2.3 MB each)


StepOutputs = tuple[Tensor, Tensor]


class GraphRunner(Protocol):
    """Runs eager warm-up steps and records/replays a step; ``CudaGraphs`` is the real one."""

    def warmup(self, fn: Callable[[], StepOutputs]) -> StepOutputs: ...

    def capture(self, fn: Callable[[], StepOutputs]) -> tuple[Callable[[], None], StepOutputs]:
        """Record ``fn`` without running it; returns a replay function and the outputs each replay rewrites."""
        ...


class CudaGraphs:
    """CUDA graphs as the PyTorch notes prescribe: warm-up on a side stream, graphs sharing one memory pool.

    Sharing the pool is safe here although the two graphs replay in any order: a later capture may only place
    its tensors in memory an earlier graph freed (its temporaries), and the only tensors of a graph that
    outlive its replay, its outputs, are read before the next step replays anything (``StepOutputs`` doc).
    """

    def __init__(self) -> None:
        self.pool: Any = None
        self.side: torch.cuda.Stream | None = None
        self.graphs: list[torch.cuda.CUDAGraph] = []  # kept alive as long as their outputs are

    def warmup(self, fn: Callable[[], StepOutputs]) -> StepOutputs:
        if self.side is None:
            self.side = torch.cuda.Stream()
        # Waiting on the current stream first also keeps the allocator's reuse of side-stream blocks safe.
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            outputs = fn()
        torch.cuda.current_stream().wait_stream(self.side)
        return outputs

    def capture(self, fn: Callable[[], StepOutputs]) -> tuple[Callable[[], None], StepOutputs]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            outputs = fn()
        self.pool = graph.pool()
        self.graphs.append(graph)
        return graph.replay, outputs


class FastStepper:
    """The fast engine (module doc): flat parameters, one Adam, optional bf16/channels_last/CUDA graphs.

    Steps are of two kinds, plain and backtracking (every ``backtrack_every``-th); with a ``graphs`` runner each
    kind is recorded once, after it has run eagerly ``warmup_steps`` times (backtracking: once), then replayed.
    Step 1 is always eager: it creates Adam's state and the EMA, which the recorded steps then update in place.
    """

    def __init__(self, s: StepSetup, runtime: DipRuntime, graphs: GraphRunner | None = None) -> None:
        self.s = s
        self.runtime = runtime
        self.n = s.target.shape[0]
        device = s.target.device
        self.flat = FlatParameters(s.net, channels_last=runtime.channels_last)
        # capturable keeps Adam's step count on the device, which a replayed graph needs.
        capturable = graphs is not None and device.type == "cuda"
        self.optimiser = torch.optim.Adam([self.flat.data], lr=s.lr, foreach=False, capturable=capturable)
        self.ema = torch.empty_like(s.target)
        self.last_psnr = torch.full((self.n,), -float("inf"), device=device)
        self.restores = torch.zeros(self.n, dtype=torch.long, device=device)
        self.cropped = s.target[..., : s.crop[0], : s.crop[1]]
        self.jitter = torch.empty(s.base_noise.shape, device=device)
        layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
        self.base = s.base_noise.contiguous(memory_format=layout)
        self.saved: list[Tensor] = []
        self.graphs = graphs
        self.recorded: dict[bool, tuple[Callable[[], None], StepOutputs]] = {}
        self.eager_runs = {False: 0, True: 0}
        self.notes: dict[str, Any] = {
            "engine": "fast",
            "precision": runtime.precision,
            "channels_last": runtime.channels_last,
            "cuda_graphs": graphs is not None,
            "shared_input": runtime.shared_input,
        }

    def _eager(self, *, first: bool, backtrack: bool) -> StepOutputs:
        with warnings.catch_warnings():
            # torch warns when a capturable optimiser steps outside a graph: expected for the warm-up steps.
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            return self._compute(first=first, backtrack=backtrack)

    def _live(self) -> list[Tensor]:
        state = self.optimiser.state[self.flat.data]
        return [self.flat.data.detach(), state["exp_avg"], state["exp_avg_sq"]]

    def _compute(self, *, first: bool, backtrack: bool) -> StepOutputs:
        """One step on static buffers: no host synchronisation, no data-dependent Python branching."""
        s, n = self.s, self.n
        self.flat.grad.zero_()
        noise = self.base + self.jitter * s.jitter_std  # one copy, shared by every replica (see skipnet)
        if not self.runtime.shared_input:
            noise = noise.expand(n, -1, -1, -1)
        bf16 = self.runtime.precision == "bf16"
        # No autocast cache: cast weights must not outlive a captured graph's step.
        bf16_ctx = torch.autocast(s.target.device.type, dtype=torch.bfloat16, cache_enabled=False)
        with bf16_ctx if bf16 else nullcontext():
            out = s.net(noise)
        out = out.float()
        per_image = (out - s.target).pow(2).flatten(1).mean(dim=1)
        per_image.sum().backward()
        out = out.detach()
        dropped: Tensor | None = None
        with torch.no_grad():
            if backtrack:
                current = dip_psnr(out[..., : s.crop[0], : s.crop[1]], self.cropped)
                # The EMA has one row per replica, as backtrack_ expects; the flat buffers need a per-element mask.
                dropped = backtrack_([self.ema], self.saved[3:], current, self.last_psnr, drop_db=s.backtrack_db)
                mask = dropped.index_select(0, self.flat.replica_of)
                self.restores += dropped
                for cur, old in zip(self._live(), self.saved[:3], strict=True):
                    cur.copy_(torch.where(mask, old, cur))
                    old.copy_(cur)
                self.flat.grad.masked_fill_(mask, 0.0)
        self.optimiser.step()
        _update_ema_(self.ema, out, first=first, decay=s.ema_decay, dropped=dropped)
        return out, per_image.detach()

    def step(self, step: int) -> StepOutputs:
        """Run step ``step`` (1-based). The returned tensors may be rewritten by the next step (by either graph,
        which share memory): read or copy them before calling ``step`` again."""
        s = self.s
        # Drawn outside any graph, from the reference's generator: both engines see the same jitter.
        torch.randn(s.base_noise.shape, generator=s.jitter_generator, device=s.target.device, out=self.jitter)
        if step == 1:
            outputs = self._eager(first=True, backtrack=False)
            self.saved = [t.detach().clone() for t in self._live()] + [self.ema.clone()]
            return outputs
        backtrack = step % s.backtrack_every == 0
        if self.graphs is None:
            return self._compute(first=False, backtrack=backtrack)
        recorded = self.recorded.get(backtrack)
        if recorded is None and self.eager_runs[backtrack] >= (1 if backtrack else self.runtime.warmup_steps):
            recorded = self._record(self.graphs, backtrack)
            if recorded is None:
                return self._eager(first=False, backtrack=backtrack)
        if recorded is not None:
            replay, outputs = recorded
            replay()
            return outputs
        self.eager_runs[backtrack] += 1
        return self.graphs.warmup(lambda: self._eager(first=False, backtrack=backtrack))

    def _record(self, graphs: GraphRunner, backtrack: bool) -> tuple[Callable[[], None], StepOutputs] | None:
        try:
            self.recorded[backtrack] = graphs.capture(lambda: self._compute(first=False, backtrack=backtrack))
        except Exception as exc:  # a capture failure costs speed, never the job: go on eagerly
            log.warning("CUDA graph capture failed, DIP continues eagerly: %s", exc)
            self.graphs = None
            self.recorded.clear()
            self.notes["cuda_graphs"] = False
            self.notes["cuda_graphs_error"] = f"{type(exc).__name__}: {exc}"[:300]
            return None
        return self.recorded[backtrack]


def make_stepper(s: StepSetup, runtime: DipRuntime) -> ReferenceStepper | FastStepper:
    if runtime.engine == "reference":
        return ReferenceStepper(s)
    graphs = CudaGraphs() if s.target.device.type == "cuda" and runtime.cuda_graphs else None
    return FastStepper(s, runtime, graphs)
