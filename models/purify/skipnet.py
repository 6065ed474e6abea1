"""The Deep Image Prior "skip" encoder-decoder (Ulyanov et al. 2018), as the paper describes it.

Written from the description in docs/PAPER.md ("Settings they used", DIP): channels down/up
[8, 16, 32, 64, 128], skip channels [0, 0, 0, 4, 4], 3x3 convolutions, stride-2 convolutions to
downsample, bilinear upsampling, reflection padding, BatchNorm, LeakyReLU(0.2), 1x1 conv + sigmoid.

One module holds ``replicas`` independent networks: every convolution is grouped by replica and
every BatchNorm sees ``replicas x C`` channels of a batch of one, so replica ``r`` computes exactly
what a stand-alone network would on image ``r`` (BatchNorm statistics are per image and channel,
as with the batch of one the paper used). This is how several images are purified in one pass
without their results depending on each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class SkipConfig:
    """Shape of the skip network. The defaults are the paper's."""

    channels_down: tuple[int, ...] = (8, 16, 32, 64, 128)
    channels_up: tuple[int, ...] = (8, 16, 32, 64, 128)
    channels_skip: tuple[int, ...] = (0, 0, 0, 4, 4)
    input_channels: int = 32
    output_channels: int = 3
    kernel_size: int = 3
    skip_kernel_size: int = 1
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        n = len(self.channels_down)
        if n == 0 or len(self.channels_up) != n or len(self.channels_skip) != n:
            raise ValueError(
                "channels_down, channels_up and channels_skip need the same non-zero length, got "
                f"{self.channels_down}, {self.channels_up}, {self.channels_skip}"
            )
        if min(self.channels_down + self.channels_up) < 1 or min(self.channels_skip) < 0:
            raise ValueError(f"channel counts must be positive (skip: >= 0), got {self}")
        if self.kernel_size % 2 != 1 or self.skip_kernel_size % 2 != 1:
            raise ValueError(f"kernel sizes must be odd, got {self.kernel_size} and {self.skip_kernel_size}")
        if self.input_channels < 1:
            raise ValueError(f"input_channels must be >= 1, got {self.input_channels}")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (one halving per level)."""
        return 2**self.depth

    @property
    def min_size(self) -> int:
        """Smallest padded side: the deepest 3x3 reflection-padded conv needs a map of at least 2 x 2."""
        return 2 ** (self.depth + 1)


class _GroupedConv(nn.Conv2d):
    """``replicas`` independent convolutions with reflection padding ("same" size at stride 1).

    Given one shared copy of the per-replica input (``c_in`` channels instead of ``replicas x c_in``), it computes
    every replica's output from that copy with one dense convolution: the weights of a grouped convolution,
    ``(replicas x c_out, c_in, k, k)``, are exactly those of a dense one from ``c_in`` to ``replicas x c_out``
    channels. The network's input noise is the same for all replicas, so its first layer never materialises
    ``replicas`` copies of a 32-channel full-resolution tensor.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, replicas: int, stride: int = 1) -> None:
        super().__init__(
            c_in * replicas,
            c_out * replicas,
            kernel,
            stride=stride,
            padding=kernel // 2,
            padding_mode="reflect",
            groups=replicas,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.groups > 1 and x.shape[1] == self.in_channels // self.groups:
            p = self.kernel_size[0] // 2  # the "same" padding of the odd square kernel set in __init__
            x = F.pad(x, (p, p, p, p), mode="reflect")
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, 1)
        return super().forward(x)


def _norm(channels: int, replicas: int) -> nn.BatchNorm2d:
    # DIP always normalises with the statistics of the image itself (a batch of one, always in
    # training mode); running statistics would never be read, so they are not kept (3 kernels fewer).
    return nn.BatchNorm2d(channels * replicas, track_running_stats=False)


def _norm_act(channels: int, replicas: int, slope: float) -> list[nn.Module]:
    return [_norm(channels, replicas), nn.LeakyReLU(slope)]


def _cat_replicas(a: Tensor, b: Tensor, replicas: int) -> Tensor:
    """Concatenate channels replica by replica: [a_r, b_r] for each r (grouped convs expect this order)."""
    n, _, h, w = a.shape
    a5 = a.reshape(n, replicas, -1, h, w)
    b5 = b.reshape(n, replicas, -1, h, w)
    return torch.cat([a5, b5], dim=2).reshape(n, -1, h, w)


class _Level(nn.Module):
    """One encoder/decoder level: a skip branch beside a downsample -> deeper -> upsample branch."""

    def __init__(self, cfg: SkipConfig, index: int, c_in: int, replicas: int) -> None:
        super().__init__()
        self.replicas = replicas
        d, s, u = cfg.channels_down[index], cfg.channels_skip[index], cfg.channels_up[index]
        k, slope = cfg.kernel_size, cfg.negative_slope
        self.skip: nn.Module | None = None
        if s > 0:
            self.skip = nn.Sequential(
                _GroupedConv(c_in, s, cfg.skip_kernel_size, replicas), *_norm_act(s, replicas, slope)
            )
        deep: list[nn.Module] = [
            _GroupedConv(c_in, d, k, replicas, stride=2),
            *_norm_act(d, replicas, slope),
            _GroupedConv(d, d, k, replicas),
            *_norm_act(d, replicas, slope),
        ]
        if index + 1 < cfg.depth:
            deep.append(_Level(cfg, index + 1, d, replicas))
            deep_out = cfg.channels_up[index + 1]
        else:
            deep_out = d
        deep.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.deep = nn.Sequential(*deep)
        merged = s + deep_out
        self.merge = nn.Sequential(
            _norm(merged, replicas),
            _GroupedConv(merged, u, k, replicas),
            *_norm_act(u, replicas, slope),
            _GroupedConv(u, u, 1, replicas),
            *_norm_act(u, replicas, slope),
        )

    def forward(self, x: Tensor) -> Tensor:
        deep = self.deep(x)
        if self.skip is None:
            return self.merge(deep)
        return self.merge(_cat_replicas(self.skip(x), deep, self.replicas))


class SkipNet(nn.Module):
    """``replicas`` independent DIP skip networks evaluated as one module.

    ``forward`` takes noise ``replicas x input_channels x H x W`` (H, W multiples of
    ``config.multiple`` and at least ``config.min_size``) and returns ``replicas x 3 x H x W`` in (0, 1).
    """

    def __init__(self, config: SkipConfig | None = None, *, replicas: int = 1) -> None:
        super().__init__()
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.config = config or SkipConfig()
        self.replicas = replicas
        cfg = self.config
        self.body = _Level(cfg, 0, cfg.input_channels, replicas)
        self.head = _GroupedConv(cfg.channels_up[0], cfg.output_channels, 1, replicas)

    def forward(self, noise: Tensor) -> Tensor:
        """``noise`` is one input per replica (``replicas x C x H x W``) or one shared by all (``1 x C x H x W``)."""
        r, c, h, w = noise.shape
        if r not in (1, self.replicas) or c != self.config.input_channels:
            raise ValueError(
                f"expected noise {self.replicas} (or 1, shared) x {self.config.input_channels} x H x W, "
                f"got {tuple(noise.shape)}"
            )
        out = torch.sigmoid(self.head(self.body(noise.reshape(1, r * c, h, w))))
        return out.reshape(self.replicas, self.config.output_channels, h, w)

    @torch.no_grad()
    def reset_parameters_(self, generator: torch.Generator) -> None:
        """Initialise from ``generator`` alone (not the global RNG), identically for every replica.

        Same distributions as PyTorch's defaults (kaiming-uniform with a = sqrt(5), i.e. U(+-1/sqrt(fan_in))
        for weights and biases; BatchNorm weight 1, bias 0), drawn once per layer for a single network and
        copied to every replica, so a seed gives the same network whether an image is alone or batched.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                per_out = module.out_channels // self.replicas
                fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                bound = 1.0 / math.sqrt(fan_in)
                w_one = torch.empty((per_out, *module.weight.shape[1:]), device="cpu")
                w_one.uniform_(-bound, bound, generator=generator)
                module.weight.copy_(w_one.repeat(self.replicas, 1, 1, 1))
                if module.bias is not None:
                    b_one = torch.empty(per_out, device="cpu").uniform_(-bound, bound, generator=generator)
                    module.bias.copy_(b_one.repeat(self.replicas))
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
