"""Properties of the purifiers: shapes, range, determinism, cancellation, backtracking, stopping, denoising."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.progress import Cancelled, Progress
from models.purify import PRESETS, PURIFIERS, DipPreset, SkipConfig, SkipNet, WMVConfig, dip_purify, psnr
from models.purify.engine import backtrack_
from models.purify.stopping import WindowedVariance

# A 3-level net keeps CPU tests fast; the paper's 5-level net is exercised where the shape logic matters.
SMALL = DipPreset(
    name="small",
    net=SkipConfig(channels_down=(8, 16, 32), channels_up=(8, 16, 32), channels_skip=(0, 4, 4)),
    max_iterations=60,
)


def smooth_image(h: int = 32, w: int = 32, n: int = 1) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * torch.sin(3 * xx + 2 * yy)])
    return img.unsqueeze(0).repeat(n, 1, 1, 1)


def test_skipnet_paper_shape_and_size() -> None:
    net = SkipNet()
    with torch.no_grad():
        out = net(torch.rand(1, 32, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert float(out.min()) > 0 and float(out.max()) < 1
    # ~0.6M parameters, as docs/PAPER.md says of the paper net.
    assert 0.5e6 < sum(p.numel() for p in net.parameters()) < 0.7e6


def test_skipnet_replicas_match_a_single_network() -> None:
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    single, double = SkipNet(SMALL.net), SkipNet(SMALL.net, replicas=2)
    single.reset_parameters_(gen_a)
    double.reset_parameters_(gen_b)
    z = torch.rand(2, 32, 32, 32)
    torch.testing.assert_close(double(z)[1:], single(z[1:]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(33, 27), (48, 40)])
def test_dip_keeps_shape_and_range_for_odd_sizes(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    result = dip_purify(x, preset="paper", max_iterations=4)
    assert result.image.shape == x.shape
    assert result.image.dtype == torch.float32
    assert float(result.image.min()) >= 0.0 and float(result.image.max()) <= 1.0
    assert result.stopped_by == "fixed" and result.iterations == (4, 4) and result.steps == 4


def test_dip_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = dip_purify(x, preset=SMALL, max_iterations=15, seed=7).image
    b = dip_purify(x, preset=SMALL, max_iterations=15, seed=7).image
    c = dip_purify(x, preset=SMALL, max_iterations=15, seed=8).image
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)


def test_dip_images_in_a_batch_are_independent() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[1] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    a = dip_purify(x, preset=SMALL, max_iterations=15).image
    b = dip_purify(y, preset=SMALL, max_iterations=15).image
    torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)
    assert not torch.allclose(a[1], b[1], atol=1e-3)


def test_dip_result_does_not_depend_on_the_batch_size_from_two_on() -> None:
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    two = dip_purify(x[:2], preset=SMALL, max_iterations=15).image
    three = dip_purify(x, preset=SMALL, max_iterations=15).image
    torch.testing.assert_close(two, three[:2], atol=0, rtol=0)
    # Alone: dense instead of grouped convolutions, so other rounding (README: not bit-identical), same fit.
    alone = dip_purify(x[:1], preset=SMALL, max_iterations=15).image
    assert float(psnr(alone, two[:1])) > 30


def test_progress_is_strictly_increasing_and_reports_psnr() -> None:
    seen: list[Progress] = []
    dip_purify(torch.rand(1, 3, 32, 32), preset=SMALL, max_iterations=40, progress=seen.append, progress_every=5)
    iterations = [p.iteration for p in seen]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 40
    assert all(p.max_iterations == 40 and p.psnr is not None and math.isfinite(p.psnr) for p in seen)


def test_should_stop_cancels_within_ten_iterations() -> None:
    last_seen = [0]

    def on_progress(p: Progress) -> None:
        last_seen[0] = p.iteration

    def should_stop() -> bool:  # the user presses "cancel" once iteration 12 has been reported
        return last_seen[0] >= 12

    with pytest.raises(Cancelled) as info:
        dip_purify(
            torch.rand(1, 3, 32, 32),
            preset=SMALL,
            max_iterations=500,
            progress=on_progress,
            should_stop=should_stop,
            progress_every=1,
        )
    assert info.value.iteration - 12 <= 10


def test_backtrack_restores_only_the_images_whose_psnr_fell() -> None:
    live = [torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([10.0, 20.0])]
    saved = [torch.tensor([[0.0, 0.0], [0.5, 0.5]]), torch.tensor([0.0, 5.0])]
    last = torch.tensor([30.0, 30.0])
    # Image 0 fell 6 dB (> 5): restored. Image 1 fell 4 dB: kept and checkpointed.
    dropped = backtrack_(live, saved, torch.tensor([24.0, 26.0]), last, drop_db=5.0)
    assert dropped.tolist() == [True, False]
    assert live[0].tolist() == [[0.0, 0.0], [2.0, 2.0]] and live[1].tolist() == [0.0, 20.0]
    assert saved[0].tolist() == [[0.0, 0.0], [2.0, 2.0]] and saved[1].tolist() == [0.0, 20.0]
    assert last.tolist() == [30.0, 26.0]


def test_backtrack_never_fires_on_the_first_check() -> None:
    live, saved = [torch.ones(1, 3)], [torch.zeros(1, 3)]
    dropped = backtrack_(live, saved, torch.tensor([-50.0]), torch.tensor([-math.inf]), drop_db=5.0)
    assert not bool(dropped.any()) and torch.equal(saved[0], live[0])


def test_windowed_variance_finds_the_minimum_and_freezes() -> None:
    cfg = WMVConfig(window=20, stride=10, patience=30, min_iterations=0)
    like = torch.zeros(1, 1, 1, 1)
    tracker = WindowedVariance(cfg, like)
    # Outputs change fast, then settle (the minimum at iteration 60), then drift again.
    values = [0.0, 1.0, 1.5, 1.7, 1.75, 1.75, 1.8, 2.0, 2.5, 3.5, 5.0, 7.0]
    for k, v in enumerate(values, start=1):
        tracker.observe(10 * k, torch.full((1, 1, 1, 1), v), torch.full((1, 1, 1, 1), float(k)))
    assert bool(tracker.done()[0])
    assert int(tracker.best_iteration[0]) == 60
    assert float(tracker.best_image[0]) == 6.0


def test_auto_stop_fires_after_the_minimum_and_before_the_cap() -> None:
    stopping = WMVConfig(window=20, stride=5, patience=60, min_iterations=100)
    preset = dataclasses.replace(SMALL, stop="auto", max_iterations=1500, stopping=stopping)
    result = dip_purify(smooth_image(), preset=preset)
    assert result.stopped_by == "auto"
    assert 100 <= result.steps < 1500
    assert result.iterations[0] <= result.steps - stopping.patience
    assert result.stop_trace, "the variance trace is recorded for plots"


def test_default_preset_is_label_free_auto_stop_and_paper_is_fixed_6000() -> None:
    assert PRESETS["paper"].stop == "fixed" and PRESETS["paper"].max_iterations == 6000
    assert PRESETS["default"].stop == "auto" and PRESETS["default"].max_iterations <= 3000


def test_dip_fits_the_input_and_early_output_denoises() -> None:
    clean = smooth_image(48, 40)
    noisy = (clean + 0.08 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    early = dip_purify(noisy, preset="paper", max_iterations=300)
    late_mse = float((early.image - noisy).pow(2).mean())
    assert late_mse < float((torch.full_like(noisy, 0.5) - noisy).pow(2).mean()) / 4  # it fits
    # The reason DIP purifies: content is fitted before the noise.
    assert float(psnr(early.image, clean)[0]) > float(psnr(noisy, clean)[0]) + 3.0
    assert early.psnr_trace[300][0] > early.psnr_trace[50][0]


def test_jpeg_changes_a_noisy_image() -> None:
    x = torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(0))
    out = PURIFIERS["jpeg"](x, quality=50)
    assert out.image.shape == x.shape and out.method == "jpeg"
    assert float((out.image - x).abs().mean()) > 0.02


def test_median_removes_salt_and_pepper() -> None:
    clean = smooth_image(32, 32)
    noisy = clean.clone()
    mask = torch.rand(clean.shape[-2:], generator=torch.Generator().manual_seed(0))
    noisy[..., mask < 0.05] = 0.0
    noisy[..., mask > 0.95] = 1.0
    out = PURIFIERS["median"](noisy, kernel_size=3).image
    assert out.shape == noisy.shape
    assert float(psnr(out, clean)[0]) > float(psnr(noisy, clean)[0]) + 10.0


@pytest.mark.parametrize("bits", [1, 3, 5])
def test_bitdepth_gives_at_most_two_to_the_bits_levels(bits: int) -> None:
    out = PURIFIERS["bitdepth"](torch.rand(1, 3, 32, 32), bits=bits).image
    assert out.unique().numel() <= 2**bits
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("jpeg", {"quality": 0}, "0"),
        ("jpeg", {"quality": 99}, "99"),
        ("median", {"kernel_size": 4}, "4"),
        ("median", {"kernel_size": 1}, "1"),
        ("bitdepth", {"bits": 9}, "9"),
        ("bitdepth", {"bits": 2.5}, "2.5"),
        ("dip", {"preset": "fast"}, "fast"),
        ("dip", {"max_iterations": 0}, "0"),
        ("dip", {"stop": "never"}, "never"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_the_value(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PURIFIERS[name](torch.rand(1, 3, 16, 16), **params)


@pytest.mark.parametrize("bad", [torch.rand(3, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 3, 8, 8) + 1.0])
def test_bad_images_are_refused(bad: torch.Tensor) -> None:
    for fn in PURIFIERS.values():
        with pytest.raises(ValueError):
            fn(bad)
