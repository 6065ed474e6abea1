"""One evaluation run: R1 clean detection, R2 attacks, R3 Lipschitz detectors, R4 DIP, as one results dict.

``evaluate`` returns plain JSON-able data (numbers, lists, dicts); ``models.evaluation.report`` renders it as
markdown and ``models.evaluation.figures`` as PNGs, so the report can be regenerated from ``results.json``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from models import purify as purifiers
from models.data.folder import TensorFolder, load_image_folder
from models.detector import FAKE_INDEX
from models.evaluation.adaptive import purifier_rows, suite_rows
from models.evaluation.attacks import run_attacks, summary_table
from models.evaluation.calibration import calibrate, roc_curve, roc_png
from models.evaluation.clean import bb_source, clean_metrics, load_member, p_fake_of, subsample
from models.evaluation.config import EvalConfig
from models.evaluation.dip import run_dip
from models.evaluation.sweep import sweep
from models.facecrop import load_folder
from models.lipschitz import input_gradient_norm
from models.progress import ProgressFn
from models.purify import DIP


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


class FittedSplit:
    """One split read once per distinct fitting among the detectors: each detector scores the images as /detect
    fits them for it (a 380 px detector never sees a 224 px detector's images upsampled)."""

    def __init__(self, root: Path, crop: str) -> None:
        self.root, self.crop = root, crop
        self._read: dict[Any, TensorFolder] = {}

    def for_member(self, member: Any) -> TensorFolder:
        key = member.detector.fitting
        if key not in self._read:
            self._read[key] = load_folder(self.root, member.detector, crop=self.crop)
        return self._read[key]

    def p_fake(self, member: Any, *, batch_size: int, device: torch.device) -> torch.Tensor:
        fitted = self.for_member(member).images
        return p_fake_of(member.detector.prefitted(), fitted, batch_size=batch_size, device=device)


def attack_space(test: FittedSplit, members: list[Any], notes: list[str]) -> TensorFolder:
    """The images the attacks perturb, in pixels every detector fits itself: the files at their own size when they
    all share one (each detector then sees exactly what /detect shows it), else the first detector's fitting."""
    if test.crop == "none":
        try:
            return load_image_folder(test.root, fitting=None)
        except ValueError:
            pass
    notes.append(
        f"attacks perturb the images as {members[0].name} is shown them ({members[0].detector.fitting.describe()}"
        f"{', face crops' if test.crop == 'faces' else ''}): the test images differ in size; clean metrics and "
        "calibration use each detector's own fitting"
    )
    return test.for_member(members[0])


def _calibration(
    members: list[Any],
    data_dir: Path,
    test: FittedSplit,
    out_dir: Path,
    config: EvalConfig,
    *,
    device: torch.device,
    notes: list[str],
) -> tuple[dict[str, Any], str | None]:
    """Operating points on the test split and a threshold fitted on DATA/val for ``config.target_fpr``, per
    detector (models/evaluation/calibration.py), and the ROC curves as one PNG."""
    if not (data_dir / "val").is_dir():
        notes.append(f"calibration skipped: {data_dir} has no val/ split to fit a threshold on")
        return {}, None
    val = FittedSplit(data_dir / "val", test.crop)  # as the test split is read
    out: dict[str, Any] = {}
    curves = {}
    for m in members:
        p_val = val.p_fake(m, batch_size=config.batch_size, device=device)
        p_test = test.p_fake(m, batch_size=config.batch_size, device=device)
        labels, test_labels = val.for_member(m).labels, test.for_member(m).labels
        fpr, tpr, _ = roc_curve(p_test, test_labels)
        curves[m.name] = (fpr, tpr)
        try:
            out[m.name] = calibrate(p_val, labels, p_test, test_labels, target_fpr=config.target_fpr)
        except ValueError as exc:  # too few reals in val/ for the target FPR: said, not fitted
            notes.append(f"calibration of {m.name} skipped: {exc}")
    return out, (str(roc_png(curves, out_dir / "roc.png")) if curves else None)


def _r5(
    members: list[Any],
    x: torch.Tensor,
    y: torch.Tensor,
    config: EvalConfig,
    *,
    device: torch.device,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    """Non-adaptive vs adaptive PGD through each purifier on the first detector's attacked fakes that it calls
    fake, and the standard suite on every given detector, not the Lipschitz sweep's (models/evaluation/adaptive.py)."""
    target = members[0]
    detector = target.detector.to(device).eval()
    fakes = detector.called_fake(x[y == FAKE_INDEX].to(device), config.r5_fakes, threshold=target.threshold)
    names = config.r5_purifiers or tuple(purifiers.names())
    thresholds = tuple(sorted({0.5, config.dip_threshold, target.threshold}))
    rows: list[dict[str, Any]] = []
    if len(fakes):
        rows = purifier_rows(
            detector, fakes, purifier_names=names, eps_values=config.r5_eps, steps=config.r5_steps,
            iterations=config.r5_iterations, bpda_iterations=config.r5_bpda_iterations, eot_samples=config.r5_eot,
            resubmissions=config.r5_resubmissions, thresholds=thresholds, seed=config.seed, progress=progress,
        )  # fmt: skip
    suite = suite_rows(
        [m for m in members if m.role == "base"], x.to(device), y.to(device), eps=config.r5_suite_eps,
        budget=config.r5_suite_budget, seed=config.seed,
    )  # fmt: skip
    return {"detector": target.name, "fakes": len(fakes), "thresholds": list(thresholds), "rows": rows, "suite": suite}


def evaluate(
    checkpoints: Sequence[str | Path],
    data_dir: str | Path,
    out_dir: str | Path,
    config: EvalConfig,
    *,
    device: torch.device,
    lipschitz_checkpoints: Sequence[str | Path] = (),
    progress: ProgressFn | None = None,
    crop: str = "none",
) -> dict[str, Any]:
    """Each detector's clean metrics and calibration are computed on the images fitted by its own fitting, as /detect
    fits them (``FittedSplit``); the attacks perturb one image set every detector fits itself (``attack_space``).
    ``crop="faces"``: the folders hold full photos; every face found is one sample (models/facecrop.py)."""
    if not checkpoints:
        raise ValueError("evaluate needs at least one checkpoint")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    members = [load_member(p, device=device) for p in checkpoints]
    members += [load_member(p, device=device) for p in lipschitz_checkpoints]
    for m in members[len(checkpoints) :]:
        m.role = "lipschitz"
    data_dir = Path(data_dir)
    notes: list[str] = []
    split = FittedSplit(data_dir / "test", crop)
    test = attack_space(split, members, notes)

    t = time.perf_counter()
    sweep_log: dict[str, Any] | None = None
    base_resnet = next((m for m in members if m.role == "base" and m.family == "resnet"), None)
    if config.lipschitz_lambdas and base_resnet is not None:
        if (data_dir / "train").is_dir() and (data_dir / "val").is_dir():
            swept, sweep_log = sweep(
                base_resnet, data_dir, Path(out_dir) / "lipschitz", config, device=device, progress=progress, crop=crop
            )
            members += swept
        else:
            notes.append(f"Lipschitz sweep skipped: {data_dir} has no train/ and val/ splits")
    elif config.lipschitz_lambdas:
        notes.append("Lipschitz sweep skipped: no ResNet among the checkpoints")
    timings["lipschitz_sweep"] = time.perf_counter() - t

    t = time.perf_counter()
    clean = {
        m.name: clean_metrics(
            m, split.for_member(m).images, split.for_member(m).labels, batch_size=config.batch_size, device=device
        )
        for m in members
    }
    calibration, roc_figure = _calibration(members, data_dir, split, Path(out_dir), config, device=device, notes=notes)
    timings["clean"] = time.perf_counter() - t

    idx = subsample(test.labels, config.n_per_class, seed=config.seed)
    x, y = test.images[idx], test.labels[idx]
    t = time.perf_counter()
    attack_run = run_attacks(members, x, y, config, device=device, progress=progress)
    timings["attacks"] = time.perf_counter() - t

    t = time.perf_counter()
    grad_norms = {m.name: input_gradient_norm(m.detector.to(device), x.to(device)) for m in members}
    timings["input_gradients"] = time.perf_counter() - t

    dip: dict[str, Any] | None = None
    if config.dip:
        t = time.perf_counter()
        name = config.dip_detector or members[0].name
        target = next((m for m in members if m.name == name), None)
        if target is None:
            raise ValueError(f"dip_detector {name!r} is not among the detectors {[m.name for m in members]}")
        dip = run_dip(target, members, x, y, attack_run, config, device=device, progress=progress)
        timings[DIP.name] = time.perf_counter() - t

    r5: dict[str, Any] | None = None
    if config.r5:
        t = time.perf_counter()
        r5 = _r5(members, x, y, config, device=device, progress=progress)
        timings["r5"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    return {
        "config": config.to_json(),
        "environment": environment(device),
        "data": {
            "path": data_dir.name,
            "crop": crop,
            "test_counts": {n: int((test.labels == i).sum()) for i, n in enumerate(("fake", "real"))},
            "attacked": {"fake": int((y == 0).sum()), "real": int((y == 1).sum())},
        },
        "detectors": [
            {**m.describe(), "bb_source": (s.name if (s := bb_source(m, members)) else None)} for m in members
        ],
        "clean": clean,
        "calibration": calibration,
        "roc_figure": roc_figure,
        "attacks": attack_run.rows,
        "summary": summary_table(
            [m.describe() for m in members], attack_run.rows, config.attack_names, config.headline_delivery
        ),
        "input_gradient_norm": grad_norms,
        "lipschitz_sweep": sweep_log,
        DIP.name: dip,
        "r5": r5,
        "notes": notes,
        "timings": timings,
    }
