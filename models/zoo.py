"""The set of trained detectors a process serves, loaded from a checkpoint folder and kept in step with it.

``Zoo.refresh`` rescans the folder (names, sizes and modification times: a few ``stat`` calls) and loads the
checkpoints that were added or replaced, drops those that were removed, and keeps serving the previous version of
a file that fails to load (a copy still being written, a broken file) until a later scan loads it. The API and the
workers call it at most every DFG_CHECKPOINTS_RELOAD_S seconds (README, "Bring your own detector").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from models import checkpoint
from models.checkpoint import CheckpointError, LoadedCheckpoint
from models.devices import resolve_device

__all__ = ["Zoo", "resolve_device"]

log = logging.getLogger("deepfake_guard.zoo")

#: What tells a changed checkpoint from the one loaded: (inode, size, mtime_ns) of its weights and of its JSON.
Stamp = tuple[int, ...]
#: What a checkpoint file can raise while it is loaded (a half-copied file, a metadata typo, a wrong shape).
LOAD_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, SafetensorError, OSError, ValueError, RuntimeError)


def _stamp(weights: Path) -> Stamp | None:
    try:
        w, m = weights.stat(), weights.with_suffix(".json").stat()
    except FileNotFoundError:  # removed between the listing and the stat
        return None
    return (w.st_ino, w.st_size, w.st_mtime_ns, m.st_ino, m.st_size, m.st_mtime_ns)


class Zoo:
    """Detectors by name (the checkpoint's file stem), all on one device."""

    def __init__(
        self, loaded: dict[str, LoadedCheckpoint], device: torch.device, directory: Path | None = None
    ) -> None:
        self._loaded = dict(sorted(loaded.items()))
        self.device = device
        self.directory = directory
        self._stamps: dict[str, Stamp] = {}
        #: Files the last scans could not load, by name, with the reason (the previous version, if any, stays).
        self.errors: dict[str, str] = {}
        self._removed: set[str] = set()
        self._scan_lock = threading.Lock()
        self._scanned_at = time.monotonic()

    @classmethod
    def from_directory(cls, directory: str | Path, device: torch.device) -> Zoo:
        """Every checkpoint of ``directory``; one that does not load stops the start (raises)."""
        if not Path(directory).is_dir():  # a typo in the setting must stop the start, not serve 503s for ever
            raise FileNotFoundError(f"checkpoint folder {str(directory)!r} does not exist (or is not a folder)")
        zoo = cls({}, device, Path(directory))
        zoo._scan(strict=True)
        return zoo

    def _load(self, path: Path) -> LoadedCheckpoint:
        entry = checkpoint.load(path, map_location=self.device)
        if self.device.type == "cuda":
            # cuDNN's tensor-core convolutions run in NHWC: same results, less layout shuffling per call.
            entry.detector.to(memory_format=torch.channels_last)
        return entry

    def refresh(self, min_interval_s: float = 0.0) -> bool:
        """Rescan the folder if the last scan is at least ``min_interval_s`` old; True if the set changed.

        Safe from several threads: one scans, the others go on with the detectors they have (a scan in progress is
        not waited for). Requests holding a detector keep it while a replacement loads."""
        if self.directory is None or time.monotonic() - self._scanned_at < min_interval_s:
            return False
        if not self._scan_lock.acquire(blocking=False):
            return False
        try:
            return self._scan(strict=False)
        finally:
            self._scan_lock.release()

    def _scan(self, *, strict: bool) -> bool:
        if self.directory is None:
            return False
        self._scanned_at = time.monotonic()
        found = {p.stem: p for p in checkpoint.discover(self.directory)}
        loaded = {name: entry for name, entry in self._loaded.items() if name in found}
        changed = len(loaded) != len(self._loaded)
        for name in set(self._loaded) - set(found):
            log.info("checkpoint %s was removed from %s", name, self.directory)
            self._stamps.pop(name, None)
            self.errors.pop(name, None)
            self._removed.add(name)
        for name, path in found.items():
            stamp = _stamp(path)
            if stamp is None or self._stamps.get(name) == stamp:
                continue
            try:
                entry = self._load(path)
            except LOAD_ERRORS as exc:
                if strict:
                    raise
                self.errors[name] = str(exc)
                log.warning(
                    "checkpoint %s not (re)loaded, %s: %s",
                    name,
                    "keeping the previous one" if name in loaded else "skipped",
                    exc,
                )
                continue
            if name in loaded:
                log.info(
                    "checkpoint %s was replaced (sha256 %s -> %s)", name, loaded[name].sha256[:12], entry.sha256[:12]
                )
            loaded[name] = entry
            self._removed.discard(name)
            self._stamps[name] = stamp
            self.errors.pop(name, None)
            changed = True
        if changed:
            self._loaded = dict(sorted(loaded.items()))  # one assignment: readers see the old set or the new one
        return changed

    def get(self, name: str) -> LoadedCheckpoint:
        try:
            return self._loaded[name]
        except KeyError:
            gone = f" (its checkpoint was removed from {self.directory})" if name in self._removed else ""
            raise KeyError(f"unknown model {name!r}{gone}; choose one of {self.names()}") from None

    def names(self) -> list[str]:
        return list(self._loaded)

    def __iter__(self) -> Iterator[LoadedCheckpoint]:
        return iter(self._loaded.values())

    def __len__(self) -> int:
        return len(self._loaded)


def choose_default(names: list[str], configured: str | None) -> tuple[str, str]:
    """The default detector and a sentence saying why: ``configured`` (DFG_DEFAULT_MODEL) when it is among ``names``,
    else, when unset, the only or first detector by name. A ValueError, in one line naming the detectors there, when
    ``configured`` is not among them."""
    ordered = sorted(names)
    if configured is not None:
        if configured in ordered or not ordered:
            return configured, f"default detector {configured!r} (DFG_DEFAULT_MODEL)"
        raise ValueError(
            f"DFG_DEFAULT_MODEL={configured!r} is not among the detectors found: {', '.join(ordered)}; set it to one "
            "of them, or unset it to use the first"
        )
    if not ordered:
        return "", "no detectors loaded"
    why = "the only detector" if len(ordered) == 1 else f"the first of {len(ordered)} by name"
    return ordered[0], f"default detector {ordered[0]!r}: {why} (DFG_DEFAULT_MODEL is unset)"
