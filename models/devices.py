"""Device names, read the same way everywhere (service settings, every command, every benchmark)."""

from __future__ import annotations

import re

import torch

#: What a device setting or ``--device`` flag may say.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` and ``cuda:N`` without that GPU are an error,
    not a silent fallback."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested but torch.cuda.is_available() is False")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} was requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device
