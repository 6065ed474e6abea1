"""The fast DIP engine against the eager reference it replaces (issue 6, target 4: CPU agreement).

CUDA graphs cannot run here; bench/purify.py compares graphed and eager outputs on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from models.images import psnr
from models.purify import DipPreset, SkipNet, dip_purify
from models.purify.engine import DipRuntime, FlatParameters

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
    ref, ref_restores = run(images, preset, engine="reference")
    fast, fast_restores = run(images, preset, engine="fast")
    assert fast_restores == ref_restores
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)


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
