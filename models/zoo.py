"""The set of trained detectors a process serves, loaded once from a checkpoint folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from models import checkpoint
from models.checkpoint import LoadedCheckpoint
from models.devices import resolve_device

__all__ = ["Zoo", "resolve_device"]


class Zoo:
    """Detectors by name (the checkpoint's file stem), all on one device."""

    def __init__(self, loaded: dict[str, LoadedCheckpoint], device: torch.device) -> None:
        self._loaded = dict(sorted(loaded.items()))
        self.device = device

    @classmethod
    def from_directory(cls, directory: str | Path, device: torch.device) -> Zoo:
        if not Path(directory).is_dir():  # a typo in the setting must stop the start, not serve 503s for ever
            raise FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist (or is not a folder)")
        paths = checkpoint.discover(directory)
        loaded = {p.stem: checkpoint.load(p, map_location=device) for p in paths}
        if device.type == "cuda":
            # cuDNN's tensor-core convolutions run in NHWC: same results, less layout shuffling per call.
            for entry in loaded.values():
                entry.detector.to(memory_format=torch.channels_last)
        return cls(loaded, device)

    def get(self, name: str) -> LoadedCheckpoint:
        try:
            return self._loaded[name]
        except KeyError:
            raise KeyError(f"unknown model {name!r}; choose one of {self.names()}") from None

    def names(self) -> list[str]:
        return list(self._loaded)

    def __iter__(self) -> Iterator[LoadedCheckpoint]:
        return iter(self._loaded.values())

    def __len__(self) -> int:
        return len(self._loaded)
