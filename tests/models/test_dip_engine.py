"""The fast DIP engine against the eager reference it replaces (docs/PERFORMANCE.md: CPU agreement).

CUDA graphs cannot run here. A recording stand-in for the graph runner drives the engine's capture/replay
control flow on CPU (narrow unit test: record without running, replay rewrites the same output tensors, as a
CUDA graph does); bench/purify.py compares real graphed and eager outputs on the GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from models.images import psnr
from models.purify import DipPreset, SkipNet, dip_purify
from models.purify.dip import build_setup
from models.purify.engine import DipRuntime, FastStepper, FlatParameters, ReferenceStepper, StepOutputs

# backtrack_db < 0 restores whenever PSNR did not rise by 0.3 dB: exercises the restore path often.
RESTORING = DipPreset(name="restoring", backtrack_db=-0.3)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(3)
    return torch.rand(2, 3, 40, 48)


def run(x: torch.Tensor, preset: DipPreset | str, **runtime: object) -> tuple[torch.Tensor, list[int]]:
    result = dip_purify(x, preset=preset, max_iterations=60, runtime=DipRuntime(**runtime))  # type: ignore[arg-type]
    return result.image, result.params["backtracks"]


@pytest.mark.parametrize("preset", ["paper", RESTORING], ids=["paper", "restoring"])
def test_fast_fp32_follows_the_reference_trajectory(images: torch.Tensor, preset: DipPreset | str) -> None:
    # With a copy of the input per replica the fast engine does the reference's arithmetic in another order
    # of kernels only: the same trajectory to float rounding.
    ref, ref_restores = run(images, preset, engine="reference")
    fast, fast_restores = run(images, preset, engine="fast", shared_input=False)
    assert fast_restores == ref_restores
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)


def test_shared_input_noise_stays_on_the_reference_trajectory(images: torch.Tensor) -> None:
    # One dense first convolution instead of a grouped one over copies: rounding differs, DIP amplifies it a little.
    ref, ref_restores = run(images, RESTORING, engine="reference")
    fast, fast_restores = run(images, RESTORING, engine="fast")
    assert fast_restores == ref_restores
    assert psnr(fast, ref).min() >= 45.0
    assert (psnr(fast, images) - psnr(ref, images)).abs().max() <= 0.05


def test_the_restoring_preset_really_restores(images: torch.Tensor) -> None:
    _, restores = run(images, RESTORING, engine="fast")
    assert min(restores) >= 1


@pytest.mark.parametrize(
    ("runtime", "min_db"), [({"channels_last": True}, 35.0), ({"precision": "bf16"}, 30.0)], ids=["nhwc", "bf16"]
)
def test_layout_and_precision_stay_close_to_fp32(
    images: torch.Tensor, runtime: dict[str, object], min_db: float
) -> None:
    ref, _ = run(images, RESTORING, engine="reference")
    fast, _ = run(images, RESTORING, engine="fast", **runtime)
    assert psnr(fast, ref).min() >= min_db
    # and it fits the image as well as fp32 does (within 0.5 dB)
    assert (psnr(fast, images) - psnr(ref, images)).abs().max() <= 0.5


def test_flat_parameters_are_views_with_one_contiguous_run_per_replica() -> None:
    net = SkipNet(replicas=3)
    before = [p.detach().clone() for p in net.parameters()]
    flat = FlatParameters(net, channels_last=True)
    for p, old in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, old)
        assert p.untyped_storage().data_ptr() == flat.data.untyped_storage().data_ptr()
    with torch.no_grad():
        flat.data.mul_(0).add_(flat.replica_of.float())  # each element becomes its replica's index
    for p in net.parameters():
        for r, rows in enumerate(p.detach().contiguous().view(3, -1)):
            assert torch.all(rows == r)


def test_runtime_validation_names_the_value() -> None:
    with pytest.raises(ValueError, match="'fp16'"):
        DipRuntime(precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference engine"):
        DipRuntime(engine="reference", precision="bf16")
    with pytest.raises(ValueError, match="'turbo'"):
        DipRuntime(engine="turbo")  # type: ignore[arg-type]


class RecordingGraphs:
    """Stands in for ``CudaGraphs``: capture runs nothing and hands out placeholder outputs that every replay
    rewrites in place, which is what a replayed CUDA graph does to the tensors its capture returned."""

    def __init__(self, like: tuple[torch.Size, torch.Size], fail: bool = False) -> None:
        self.like, self.fail = like, fail
        self.warmups = self.captures = self.replays = 0

    def warmup(self, fn: Callable[[], StepOutputs]) -> StepOutputs:
        self.warmups += 1
        return fn()

    def capture(self, fn: Callable[[], StepOutputs]) -> tuple[Callable[[], None], StepOutputs]:
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        outputs = (torch.full(self.like[0], float("nan")), torch.full(self.like[1], float("nan")))

        def replay() -> None:
            self.replays += 1
            for static, fresh in zip(outputs, fn(), strict=True):
                static.copy_(fresh)

        return replay, outputs


@pytest.mark.parametrize("fail", [False, True], ids=["replayed", "capture-fails"])
def test_graphed_control_flow_follows_the_reference(images: torch.Tensor, fail: bool) -> None:
    steps = 45
    ref = ReferenceStepper(build_setup(images, RESTORING, seed=0, device=torch.device("cpu")))
    setup = build_setup(images, RESTORING, seed=0, device=torch.device("cpu"))
    graphs = RecordingGraphs((setup.target.shape, torch.Size([images.shape[0]])), fail=fail)
    fast = FastStepper(setup, DipRuntime(shared_input=False), graphs)
    kept = []
    for step in range(1, steps + 1):
        out_ref, loss_ref = ref.step(step)
        out_fast, loss_fast = fast.step(step)
        assert torch.allclose(out_fast, out_ref, atol=1e-5, rtol=0), step
        assert torch.allclose(loss_fast, loss_ref, atol=1e-7, rtol=1e-5), step
        assert torch.allclose(fast.ema, ref.ema, atol=1e-5, rtol=0), step
        kept.append(out_fast)
    assert torch.equal(fast.restores, ref.restores) and int(ref.restores.min()) >= 1
    if fail:
        assert graphs.captures == 0 and fast.notes["cuda_graphs"] is False
        assert "not permitted" in fast.notes["cuda_graphs_error"]
    else:
        # plain steps: 3 eager warm-ups (steps 2-4), recorded at 5; backtracking: eager at 10, recorded at 20
        assert (graphs.warmups, graphs.captures, graphs.replays) == (4, 2, steps - 1 - 4)
        assert kept[-2] is kept[-3]  # replays hand back the same tensors: callers copy what they keep
