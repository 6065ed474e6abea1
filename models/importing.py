"""Bring a detector trained elsewhere into the project without ever executing code from its file.

A source file is one of ``SOURCE_FORMATS``, recognised by its bytes, not its name:

- ``safetensors``: tensors and a JSON header, nothing to execute;
- ``state-dict``: a ``torch.save`` pickle, read with ``torch.load(weights_only=True)``, whose unpickler
  only builds tensors, containers and numbers. A pickle that names any other class or function (a whole
  pickled model, an object with ``__reduce__``) is refused before anything in it runs;
- ``torchscript`` and ``torch-export``: programs (TorchScript code, an exported graph). They are read only
  with ``allow_code=True``, and only to take their weights: the served checkpoint is the named architecture
  with those weights, never the program (docs/IMPORTING.md says why, and what the flag trusts).

Common wrappers are unwrapped (``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` from
``DataParallel``, ``_orig_mod.`` from ``torch.compile``); keys that still do not fit the architecture are
named. Before anything is written the detector is validated on probe images: the backbone answers with the
declared number of logits, finite, and the input gradient (what every attack needs) is finite and non-zero.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from models import checkpoint, registry
from models.checkpoint import CheckpointMeta
from models.detector import FAKE_INDEX, Detector, SigmoidAdapter
from models.progress import ProgressFn
from models.training import binary_metrics, predict

SOURCE_FORMATS: tuple[str, ...] = ("safetensors", "state-dict", "torchscript", "torch-export")
PROGRAM_FORMATS: frozenset[str] = frozenset({"torchscript", "torch-export"})
#: Sub-dicts that training scripts wrap a state dict in, tried in this order.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "net", "module")
#: Prefixes stripped whenever every key has them: DataParallel / DistributedDataParallel, torch.compile.
ALWAYS_STRIPPED: tuple[str, ...] = ("module.", "_orig_mod.")
#: Prefixes stripped only when every key has them and the stripped keys fit the architecture better.
STRIPPED_IF_BETTER: tuple[str, ...] = ("model.", "backbone.", "net.", "encoder.")

EXPORT_HINT = (
    "Export a state dict from the training script instead: torch.save(model.state_dict(), 'detector.pth') "
    "(or safetensors.torch.save_file(model.state_dict(), 'detector.safetensors'))"
)


class DetectorImportError(ValueError):
    """A source file cannot become a served detector; the message names the value and what to do."""


@dataclass
class Source:
    """What was read from a source file, and how."""

    path: Path
    format: str
    sha256: str
    state: dict[str, Tensor]
    #: The wrappers taken off, outermost first (``["state_dict", "module."]``).
    unwrapped: list[str] = field(default_factory=list)
    #: The loaded program (``allow_code`` formats only), kept to compare its outputs with the rebuilt detector.
    program: nn.Module | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "bytes": self.path.stat().st_size,
            "sha256": self.sha256,
            "format": self.format,
            "unwrapped": list(self.unwrapped),
            "code": self.format in PROGRAM_FORMATS,
        }


def sniff_format(path: str | Path) -> str:
    """The ``SOURCE_FORMATS`` entry a file is, from its bytes; ``DetectorImportError`` if it is none."""
    p = Path(path)
    if not p.is_file():
        raise DetectorImportError(f"no source file at {str(p)!r}")
    with p.open("rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        # torch.save, torch.jit.save and torch.export.save all write zip archives under one folder.
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("/archive_format") for n in names) or any("/models/" in n for n in names):
            return "torch-export"
        if any(n.endswith("data.pkl") for n in names):
            return "state-dict"
        raise DetectorImportError(f"{p.name}: a zip archive that is not a PyTorch file (entries {names[:5]})")
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < p.stat().st_size:
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch.save's legacy (pre-1.6) format
        return "state-dict"
    raise DetectorImportError(
        f"{p.name}: not a safetensors file, a torch.save state dict, a TorchScript or a torch.export file "
        f"(starts with {head[:8]!r})"
    )


def _refuse_pickle(path: Path, exc: Exception) -> DetectorImportError:
    needed = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    what = f" (it names {needed[0]})" if needed else ""
    return DetectorImportError(
        f"{path.name} is a pickle that needs code to load{what}: a whole pickled model or another object, not "
        f"a state dict of tensors. Refused without running it: unpickling runs whatever code it names. "
        f"{EXPORT_HINT}"
    )


def _load_raw(path: Path, fmt: str, *, allow_code: bool) -> tuple[Any, nn.Module | None]:
    if fmt == "safetensors":
        try:
            return load_file(str(path), device="cpu"), None
        except (SafetensorError, OSError, ValueError) as exc:
            raise DetectorImportError(f"{path.name}: unreadable safetensors file ({exc})") from exc
    if fmt == "state-dict":
        try:
            return torch.load(path, map_location="cpu", weights_only=True), None
        except pickle.UnpicklingError as exc:
            raise _refuse_pickle(path, exc) from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise DetectorImportError(f"{path.name}: unreadable torch.save file ({exc})") from exc
    if not allow_code:
        raise DetectorImportError(
            f"{path.name} is a {fmt} program, not weights: loading it runs its code. Pass allow_code "
            f"(--allow-code) only for a file you trust; only its weights are kept. Better: {EXPORT_HINT}"
        )
    try:
        if fmt == "torchscript":
            program: nn.Module = torch.jit.load(str(path), map_location="cpu")
            return dict(program.state_dict()), program
        exported = torch.export.load(str(path))
        return {**exported.state_dict, **exported.constants}, exported.module()
    except (RuntimeError, ValueError, OSError) as exc:
        raise DetectorImportError(f"{path.name}: unreadable {fmt} file ({exc})") from exc


def _tensor_items(obj: Mapping[Any, Any]) -> bool:
    return len(obj) > 0 and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def unwrap(obj: Any, expected: Sequence[str] = ()) -> tuple[dict[str, Tensor], list[str]]:
    """The state dict inside ``obj`` and the wrappers taken off (sub-dict keys, then key prefixes).

    ``expected`` (the architecture's keys) decides the prefixes in ``STRIPPED_IF_BETTER``.
    """
    taken: list[str] = []
    while isinstance(obj, Mapping) and not _tensor_items(obj):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            others = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
            raise DetectorImportError(
                f"not a state dict: entries {others[:5]} are not tensors, and there is no "
                f"{' / '.join(WRAPPER_KEYS)} sub-dict to take the weights from. {EXPORT_HINT}"
            )
        taken.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise DetectorImportError(f"not a state dict but a {type(obj).__name__}. {EXPORT_HINT}")
    state = dict(obj)
    want = set(expected)
    while True:
        prefix = next((p for p in ALWAYS_STRIPPED if all(k.startswith(p) for k in state)), None)
        if prefix is None and want:
            overlap = len(want & set(state))
            prefix = next(
                (
                    p
                    for p in STRIPPED_IF_BETTER
                    if all(k.startswith(p) for k in state) and len(want & {k[len(p) :] for k in state}) > overlap
                ),
                None,
            )
        if prefix is None:
            return state, taken
        state = {k[len(prefix) :]: v for k, v in state.items()}
        taken.append(prefix)


def read_source(path: str | Path, *, allow_code: bool = False, expected: Sequence[str] = ()) -> Source:
    """Read a source file's state dict (``sniff_format`` decides how); never unpickles code."""
    p = Path(path)
    fmt = sniff_format(p)
    raw, program = _load_raw(p, fmt, allow_code=allow_code)
    state, taken = unwrap(raw, expected)
    return Source(p, fmt, checkpoint.sha256_file(p), state, taken, program)


def unadapted(detector: Detector) -> nn.Module:
    """The network a source file's state dict belongs to: the backbone, or the one inside ``SigmoidAdapter``."""
    inner = detector.backbone
    return inner.backbone if isinstance(inner, SigmoidAdapter) else inner  # type: ignore[return-value]


def probe_images(size: tuple[int, int], n: int = 2, *, seed: int = 0) -> Tensor:
    """Seeded uniform-noise images N x 3 x H x W in [0, 1] at ``size``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size[0], size[1], generator=gen)


def validate(detector: Detector, logits: int, *, seed: int = 0) -> dict[str, Any]:
    """Check the backbone on probe images; raises ``DetectorImportError``, returns what was measured.

    The backbone must give ``logits`` finite outputs per image, and the gradient of the fake logit margin
    with respect to the input pixels must be finite and non-zero.
    """
    detector.eval()
    x = probe_images(detector.input_size, seed=seed).requires_grad_(True)
    raw = unadapted(detector)
    prepared = detector.preprocess(x)
    out = raw(prepared)
    if not isinstance(out, Tensor):
        raise DetectorImportError(f"the backbone returns a {type(out).__name__}, not a tensor of logits")
    if tuple(out.shape) not in {(x.shape[0], logits)} | ({(x.shape[0],)} if logits == 1 else set()):
        raise DetectorImportError(
            f"the backbone gives outputs of shape {tuple(out.shape)} on {x.shape[0]} probe images; declared "
            f"logits={logits} needs ({x.shape[0]}, {logits})"
        )
    if not torch.isfinite(out).all():
        raise DetectorImportError("the backbone gives non-finite logits on the probe images")
    canonical = detector.classify(prepared)
    margin = (canonical[:, FAKE_INDEX] - canonical[:, 1 - FAKE_INDEX]).sum()
    # A model whose output ignores its input gives no gradient at all: that is a zero gradient, too.
    grad = torch.autograd.grad(margin, x, allow_unused=True)[0] if margin.requires_grad else None
    if grad is None:
        grad = torch.zeros_like(x)
    norm = float(grad.norm())
    if not torch.isfinite(grad).all() or norm == 0.0:
        raise DetectorImportError(
            f"the input gradient on the probe images is {'not finite' if norm != norm else norm}: attacks "
            f"need a finite, non-zero gradient (a non-differentiable step in the model?)"
        )
    p_fake = torch.softmax(canonical.detach(), 1)[:, FAKE_INDEX]
    return {
        "probe": {"images": x.shape[0], "size": list(detector.input_size), "seed": seed},
        "output_shape": list(out.shape),
        "p_fake": [round(float(p), 6) for p in p_fake],
        "input_grad_norm": norm,
    }


def compare_with_program(detector: Detector, raw: nn.Module, program: nn.Module, *, seed: int = 0) -> float:
    """Largest |logit difference| between a program and ``raw`` (the rebuilt network) on a probe image."""
    x = detector.preprocess(probe_images(detector.input_size, n=1, seed=seed))
    with torch.no_grad():
        try:
            theirs = program(x)
        except Exception as exc:  # a program raises whatever its code raises; say so, with the cause
            raise DetectorImportError(f"the program failed on a probe image of {tuple(x.shape)}: {exc}") from exc
        ours = raw(x)
    if not isinstance(theirs, Tensor) or theirs.numel() != ours.numel():
        raise DetectorImportError(f"the program's output {getattr(theirs, 'shape', theirs)} is not the backbone's")
    return float((theirs.reshape(ours.shape) - ours).abs().max())


@dataclass
class Imported:
    detector: Detector
    meta: CheckpointMeta
    source: Source
    validation: dict[str, Any]


def import_detector(
    src: str | Path,
    *,
    architecture: str,
    logits: int = 2,
    fake_index: int,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str = "resize",
    resize_short: int | None = None,
    interpolation: str = "bilinear",
    antialias: bool = True,
    allow_code: bool = False,
    program_tolerance: float = 1e-4,
) -> Imported:
    """Build ``architecture``, load ``src``'s weights into it and validate it (nothing is written).

    ``fake_index`` is the fake class's index in the source model's output (FaceForensics++ and most
    training code outside this project: 1); a 1-logit head's sigmoid scores class 1 (``fake_index=1``: it
    scores fake). There is no default: a wrong guess silently inverts every verdict. A program
    (``allow_code``) must reproduce its own logits within ``program_tolerance`` from the rebuilt weights.
    """
    spec = registry.get(architecture)
    meta = CheckpointMeta(
        architecture=spec.name,
        input_size=input_size or spec.input_size,
        mean=tuple(mean or spec.mean),  # type: ignore[arg-type]
        std=tuple(std or spec.std),  # type: ignore[arg-type]
        logits=logits,
        fake_index=fake_index,
        resize=resize,
        resize_short=resize_short,
        interpolation=interpolation,
        antialias=antialias,
    )
    torch.manual_seed(0)  # the head's initial values never reach the result (load_state_dict replaces them)
    detector = checkpoint.build(meta)
    # The state dict is fitted to the network inside SigmoidAdapter: the source file knows no adapter.
    target = unadapted(detector)
    source = read_source(src, allow_code=allow_code, expected=list(target.state_dict()))
    problem = checkpoint.mismatch(target, source.state, spec.name)
    if problem:
        raise DetectorImportError(
            f"{source.path.name} does not fit {spec.name} with {logits} logit(s)"
            f"{' after removing ' + repr(source.unwrapped) if source.unwrapped else ''}: {problem}"
        )
    target.load_state_dict(source.state)
    detector.eval()
    validation = validate(detector, logits)
    if source.program is not None:
        diff = compare_with_program(detector, target, source.program)
        validation["program_max_abs_logit_diff"] = diff
        if not diff <= program_tolerance:
            raise DetectorImportError(
                f"{spec.name} with the program's weights differs from the program by {diff:.3g} in the logits "
                f"(tolerance {program_tolerance:g}): the program is not this architecture; name another --arch"
            )
        source.program = None  # nothing of the program outlives the import
    return Imported(detector, meta, source, validation)


def evaluate_folder(
    detector: Detector,
    root: str | Path,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    keep_scores: bool = False,
) -> dict[str, Any]:
    """``models.training.evaluate`` on ``root/{fake,real}``, each image read and fitted as the detector serves it;
    ``keep_scores`` adds each image's p_fake (``scores``, in ``list_images`` order) for callers that need them."""
    from models.facecrop import folder_for

    data = folder_for(root, detector)
    logits, labels = predict(
        detector.to(device).prefitted(), data, batch_size=batch_size, device=device, progress=progress
    )
    detector.to("cpu")
    metrics = {**binary_metrics(logits, labels), "loss": float(F.cross_entropy(logits, labels))}
    if keep_scores:
        metrics["scores"] = torch.softmax(logits, dim=1)[:, FAKE_INDEX].tolist()
    return {"path": Path(root).name, **metrics}


def write(
    imported: Imported,
    out: str | Path,
    *,
    command: str,
    argv: Sequence[str],
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> str:
    """Write ``out``.safetensors + ``out``.json; returns the written weights' sha256."""
    meta = imported.meta
    # File names only: the checkpoint travels, and GET /models shows its provenance to every client.
    meta.provenance = checkpoint.public({
        "imported": True,
        "source": imported.source.describe(),
        "command": command,
        "argv": list(argv),
        "validation": imported.validation,
        **(extra or {}),
    })  # fmt: skip
    meta.metrics = checkpoint.public({"eval": metrics} if metrics is not None else {})
    if calibration is not None:  # the operating threshold /detect applies (models/evaluation/calibration.py)
        meta.metrics["calibration"] = checkpoint.public(calibration)
    json.dumps(meta.to_json())  # fail here, before any file is written, if something is not JSON
    return checkpoint.save(imported.detector, out, meta)
