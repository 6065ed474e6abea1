"""Checkpoints: safetensors weights beside a JSON metadata file, identified by the weights' sha256.

``NAME.safetensors`` holds the detector's state dict; ``NAME.json`` holds the architecture, input size,
class names, normalisation and provenance (dataset, seed, exact command, metrics).

Format 2 adds what a detector brought from elsewhere needs (``models.importing``): ``fake_index`` (the fake
class's index in the backbone's own output; for a 1-logit head, 1 means the sigmoid scores ``fake``) and
``resize`` (``models.fitting.FIT_MODES``). Format 3 adds the rest of the evaluation transform: ``resize_short``
(``short-side-crop``'s shorter side), ``interpolation`` and ``antialias`` (models/fitting.py). Older files have
none of these and load as before: 2-logit heads with fake at 0, 1-logit heads whose sigmoid scores fake,
whole-image resize, bilinear and antialiased.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models import registry
from models.detector import CLASS_NAMES, FAKE_INDEX, Detector, operating_threshold
from models.fitting import Fitting

FORMAT_VERSION = 3

#: The demo detectors that ship inside the package (served when DFG_CHECKPOINTS_DIR is unset): docs/DATA.md.
DEMO_CHECKPOINTS = Path(__file__).resolve().parent / "demo_checkpoints"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or does not fit the architecture it names."""


@dataclass
class CheckpointMeta:
    architecture: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, str] = CLASS_NAMES
    logits: int = 2
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    fake_index: int = FAKE_INDEX
    resize: str = "resize"
    resize_short: int | None = None
    interpolation: str = "bilinear"
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.logits not in registry.LOGITS:
            raise ValueError(f"logits must be one of {registry.LOGITS}, got {self.logits!r}")
        if self.fake_index not in (0, 1):
            raise ValueError(f"fake_index must be 0 or 1, got {self.fake_index!r}")
        self.fitting()  # refuses a mode, side, interpolation or antialias it cannot mean
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} is newer than this reader's {FORMAT_VERSION}; upgrade"
            )

    def fitting(self) -> Fitting:
        """How an image reaches this detector's input (models/fitting.py)."""
        return Fitting(
            (int(self.input_size[0]), int(self.input_size[1])), mode=self.resize, short_side=self.resize_short,
            interpolation=self.interpolation, antialias=self.antialias,
        )  # fmt: skip

    def operating_point(self, requested: float | None = None) -> tuple[float, str]:
        """``(threshold, source)`` for a verdict: ``requested``, else this checkpoint's fitted threshold, else 0.5
        (``models.detector.operating_threshold``: the one rule every verdict follows)."""
        return operating_threshold(requested, self.threshold)

    @property
    def threshold(self) -> float | None:
        """The operating threshold on p_fake fitted for a target FPR (``metrics.calibration``, written by
        ``import-detector --calibrate``; models/evaluation/calibration.py), None when the checkpoint has none
        (older checkpoints) or holds one outside [0, 1]."""
        cal = self.metrics.get("calibration")
        value = cal.get("threshold") if isinstance(cal, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            return None
        return float(value)

    @property
    def demo_data(self) -> bool:
        """Trained on the synthetic demo data (docs/DATA.md): ``provenance.dataset.demo``, or for checkpoints
        trained before that field, a dataset with a ``manifest.json``, which only ``make-demo-data`` writes."""
        dataset = self.provenance.get("dataset")
        if not isinstance(dataset, dict):
            return False
        if "demo" in dataset:
            return dataset["demo"] is True
        return bool(dataset.get("manifest_sha256"))

    def semantics(self) -> dict[str, Any]:
        """How the detector reads its input and output (what ``GET /models`` shows beside the metrics)."""
        return {
            "architecture": self.architecture,
            "input_size": list(self.input_size),
            "resize": self.resize,
            "resize_short": self.resize_short,
            "interpolation": self.interpolation,
            "antialias": self.antialias,
            "mean": list(self.mean),
            "std": list(self.std),
            "logits": self.logits,
            "fake_index": self.fake_index,
            "class_names": list(self.class_names),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            **self.semantics(),
            "provenance": self.provenance,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str) -> CheckpointMeta:
        logits = data.get("logits", 2)
        # Format 1 had no fake_index: its 2-logit heads put fake at 0 and its 1-logit heads' sigmoid scored fake.
        legacy_fake_index = 1 if logits == 1 else FAKE_INDEX
        try:
            return cls(
                architecture=str(data["architecture"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                class_names=tuple(data.get("class_names", CLASS_NAMES)),  # type: ignore[arg-type]
                logits=int(data.get("logits", 2)),
                provenance=dict(data.get("provenance", {})),
                metrics=dict(data.get("metrics", {})),
                format_version=int(data.get("format_version", 1)),
                fake_index=int(data.get("fake_index", legacy_fake_index)),
                resize=str(data.get("resize", "resize")),
                resize_short=_optional_int(data.get("resize_short")),
                interpolation=str(data.get("interpolation", "bilinear")),
                antialias=data.get("antialias", True),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CheckpointError(f"{source}: malformed metadata ({exc!r})") from exc


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"resize_short must be a whole number of pixels, got {value!r}")
    return value


def public_path(text: str) -> str:
    """A path as a checkpoint may show it to anyone: its last part only (``/home/me/data/val`` -> ``val``); an
    option written ``--out=/x/y`` keeps its name. Other text is returned as it is."""
    if "/" not in text and "\\" not in text:
        return text
    option, eq, value = text.partition("=")
    if eq and option.startswith("-"):
        return f"{option}={public_path(value)}"
    return Path(text.replace("\\", "/").rstrip("/")).name or text


def public(data: Any, key: str = "") -> Any:
    """``data`` (a checkpoint's provenance or metrics) without the paths of the machine it was made on: every
    ``path``, ``command`` and ``argv`` value keeps file names only (``GET /models`` serves it to every client)."""
    if isinstance(data, dict):
        return {k: public(v, k) for k, v in data.items()}
    if isinstance(data, list):
        return [public(v, key) for v in data]
    if isinstance(data, str) and key in ("path", "argv"):
        return public_path(data)
    if isinstance(data, str) and key == "command":
        import shlex

        try:
            return shlex.join(public_path(t) for t in shlex.split(data))
        except ValueError:  # unbalanced quotes: not a command line we wrote
            return public_path(data)
    return data


@dataclass
class LoadedCheckpoint:
    name: str
    detector: Detector
    meta: CheckpointMeta
    sha256: str
    path: Path


def paths_for(path: str | Path) -> tuple[Path, Path]:
    """``(weights, metadata)`` paths for a checkpoint given with or without its suffix."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in {".safetensors", ".json"} else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(detector: Detector, path: str | Path, meta: CheckpointMeta) -> str:
    """Write weights and metadata; returns the weights' sha256."""
    weights, meta_path = paths_for(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in detector.backbone.state_dict().items()}
    save_file(state, str(weights), metadata={"architecture": meta.architecture})
    digest = sha256_file(weights)
    meta_path.write_text(json.dumps({**meta.to_json(), "sha256": digest}, indent=2) + "\n")
    return digest


def build(meta: CheckpointMeta, *, architecture: str | None = None) -> Detector:
    """The randomly initialised detector that ``meta`` describes (``architecture`` overrides its name)."""
    return registry.get(architecture or meta.architecture).build(
        input_size=meta.input_size,
        logits=meta.logits,
        fake_index=meta.fake_index,
        resize=meta.resize,
        resize_short=meta.resize_short,
        interpolation=meta.interpolation,
        antialias=meta.antialias,
        mean=meta.mean,
        std=meta.std,
    )


def mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor], arch_name: str) -> str:
    """What keeps ``state`` from loading into ``module`` (missing, unexpected, wrong shapes); "" if it fits."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs {arch_name} {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    return _describe_mismatch(missing, unexpected, shapes)


def _describe_mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
    if shapes:
        parts.append(f"shape mismatch in {len(shapes)} tensors (e.g. {shapes[:3]})")
    return "; ".join(parts)


def load(
    path: str | Path, *, architecture: str | None = None, map_location: str | torch.device = "cpu"
) -> LoadedCheckpoint:
    """Load a checkpoint into the architecture its metadata names (or ``architecture`` if given).

    Raises ``CheckpointError`` naming what does not match when the weights do not fit.
    """
    weights, meta_path = paths_for(path)
    if not weights.is_file():
        raise CheckpointError(f"no checkpoint weights at {weights}")
    if not meta_path.is_file():
        raise CheckpointError(f"no checkpoint metadata at {meta_path}")
    try:
        raw = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    meta = CheckpointMeta.from_json(raw, source=str(meta_path))
    arch_name = architecture or meta.architecture
    detector = build(meta, architecture=arch_name)
    state = load_file(str(weights), device="cpu")
    problem = mismatch(detector.backbone, state, arch_name)
    if problem:
        raise CheckpointError(
            f"checkpoint {weights.name} (trained as {meta.architecture!r}) does not fit architecture "
            f"{arch_name!r}: {problem}"
        )
    detector.backbone.load_state_dict(state)
    detector.eval().to(map_location)
    return LoadedCheckpoint(name=weights.stem, detector=detector, meta=meta, sha256=sha256_file(weights), path=weights)


def discover(directory: str | Path) -> list[Path]:
    """Checkpoint weight files in a directory, sorted by name."""
    d = Path(directory)
    return sorted(p for p in d.glob("*.safetensors") if p.with_suffix(".json").is_file())
