"""Running an audit: the plan (shards of images x threats, fixed by the data and the profile alone), one shard, and the
record assembled from every shard's result (docs/AUDIT.md).

A shard's seed comes from the audit's seed, the threat and the shard's first image, and its images are always the same,
so the record does not depend on how many processes ran the shards, or in which order: the command line runs them one
after another, the service's workers share them.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.audit import sanity, stats
from models.audit.profiles import Threat
from models.audit.threats import L2_SUITE, AuditTarget, Shard, fit_native, l2_radius
from models.data.folder import IMAGE_EXTENSIONS, read_image
from models.detector import CLASS_NAMES, FAKE_INDEX
from models.images import encode_png
from models.methods import eps_text

AUDIT_VERSION = 1
#: Images per shard: small enough that a dead worker costs little, large enough to batch the attacks.
SHARD_SIZE = 16


@dataclass(frozen=True)
class AuditData:
    """The audited images: a name (its path under the data folder) and a true label each, and where they lie."""

    root: Path
    items: tuple[tuple[str, int], ...]

    @classmethod
    def from_folder(cls, root: str | Path) -> AuditData:
        """``root/fake`` and ``root/real`` (either may be missing: fakes only give only evasion rates)."""
        root = Path(root)
        present = [c for c in CLASS_NAMES if (root / c).is_dir()]
        if not present:
            found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            raise ValueError(f"{root} needs a fake/ or a real/ folder of images; found {found[:10]}")
        items = [
            (str(p.relative_to(root)), CLASS_NAMES.index(name))
            for name in present
            for p in sorted((root / name).rglob("*"))
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not items:
            raise ValueError(f"{root} holds no images in {present}")
        return cls(root, tuple(sorted(items, key=lambda item: (item[1], item[0]))))

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.items], dtype=torch.long)

    def native(self, index: int) -> torch.Tensor:
        return read_image(self.root / self.items[index][0])


@dataclass(frozen=True)
class ShardPlan:
    threat: Threat
    start: int
    stop: int

    @property
    def key(self) -> str:
        return f"{self.threat.id}@{self.start}"


def plan(n_images: int, threats: Sequence[Threat], *, shard_size: int = SHARD_SIZE) -> list[ShardPlan]:
    """Every (threat, image range) shard, the cheap threats first."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    ordered = sorted(threats, key=lambda t: t.spec.attack)
    return [ShardPlan(t, s, min(s + shard_size, n_images)) for t in ordered for s in range(0, n_images, shard_size)]


def shard_seed(seed: int, part: ShardPlan) -> int:
    return zlib.crc32(f"{seed}:{part.key}".encode()) & 0x7FFFFFFF


def run_shard(target: AuditTarget, data: AuditData, part: ShardPlan, *, seed: int) -> dict[str, Any]:
    """One shard's result, JSON-able (what a worker stores): p_fake and details per image, the gallery as base64."""
    native = [data.native(i) for i in range(part.start, part.stop)]
    shard = Shard(
        native=native,
        fitted=fit_native(target, native),
        labels=data.labels[part.start : part.stop],
        seed=shard_seed(seed, part),
    )
    judged = part.threat.spec.fn(target, shard, part.threat.kwargs)
    return {
        "key": part.key,
        "p_fake": [float(p) for p in judged.p_fake],
        "details": judged.details,
        "gallery": {str(part.start + i): base64.b64encode(png).decode() for i, png in judged.gallery.items()},
    }


def original_png(target: AuditTarget, data: AuditData) -> Callable[[int], bytes]:
    """The report's "original" of image ``index``: the image as the detector sees it (fitted), as a PNG."""

    def original(index: int) -> bytes:
        x = data.native(index)[None].to(target.detector.get_buffer("mean").device)
        with torch.no_grad():
            return encode_png(target.detector.fitting.apply(x)[0].clamp(0, 1).cpu())

    return original


def run_audit(
    target: AuditTarget,
    data: AuditData,
    threats: Sequence[Threat],
    *,
    seed: int = 0,
    shard_size: int = SHARD_SIZE,
    on_shard: Callable[[ShardPlan, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every shard in this process (the command line); ``on_shard(part, done, total)`` after each."""
    parts = plan(len(data.items), threats, shard_size=shard_size)
    results = {}
    for n, part in enumerate(parts, start=1):
        results[part.key] = run_shard(target, data, part, seed=seed)
        if on_shard is not None:
            on_shard(part, n, len(parts))
    return results


def _merge(parts: Sequence[ShardPlan], results: dict[str, dict[str, Any]], threat: Threat) -> dict[str, list[Any]]:
    p: list[float] = []
    details: list[dict[str, Any]] = []
    for part in parts:
        if part.threat == threat:
            got = results[part.key]
            p += got["p_fake"]
            details += got["details"]
    return {"p_fake": p, "details": details}


def assemble(
    target: AuditTarget,
    data: AuditData,
    threats: Sequence[Threat],
    results: dict[str, dict[str, Any]],
    *,
    meta: dict[str, Any],
    seed: int,
    shard_size: int = SHARD_SIZE,
) -> dict[str, Any]:
    """The audit record (docs/schemas/audit.schema.json) from every shard's result."""
    parts = plan(len(data.items), threats, shard_size=shard_size)
    missing = [p.key for p in parts if p.key not in results]
    if missing:
        raise ValueError(f"{len(missing)} shard(s) have no result, e.g. {missing[:3]}")
    labels = data.labels
    t = target.threshold
    rows, per_threat = [], {}
    for threat in threats:
        merged = _merge(parts, results, threat)
        per_threat[threat.id] = merged
        p = torch.tensor(merged["p_fake"], dtype=torch.float64)
        if threat.name == "clean":
            metrics = stats.clean_summary(p, labels, t, seed=seed)
        else:
            metrics = stats.verdict_rates(p, labels, t)
            metrics["auroc"] = stats.auroc_of(p, labels)
        row = threat.to_json()
        if threat.spec.family in ("white-box Linf", "white-box L2"):
            fooled = [d.get("fooled_by") for d in merged["details"]]
            metrics["fooled_by"] = {name: fooled.count(name) for name in sorted({f for f in fooled if f})}
        if threat.name == L2_SUITE.name:
            shape = (3, *target.detector.fitting.size)
            row["eps_l2"], row["input_size"] = l2_radius(threat.kwargs["rms"], shape), list(shape)
        rows.append({**row, "metrics": metrics})
    flags = sanity.flags(threats, per_threat, labels, t, defense=target.defense)
    clean = next(r for r in rows if r["name"] == "clean")["metrics"]
    curve = [r for r in rows if r["name"] == "linf_suite"]
    headline = max(curve, key=lambda r: r["params"]["eps"]) if curve else None
    per_image = [
        {"file": name, "label": CLASS_NAMES[label],
         "p_fake": {tid: per_threat[tid]["p_fake"][i] for tid in per_threat if not tid.startswith("sanity")}}
        for i, (name, label) in enumerate(data.items)
    ]  # fmt: skip
    robust = None if headline is None else headline["metrics"]["accuracy"]["rate"]
    return {
        # RobustBench's model-info fields, typed as it writes them, so its tools read the record.
        "name": target.name,
        "dataset": meta.get("dataset", data.root.name),
        "threat_model": "Linf",
        "eps": None if headline is None else headline["eps_text"],
        "clean_acc": None if clean["accuracy"]["rate"] is None else round(100 * clean["accuracy"]["rate"], 2),
        "autoattack_acc": None if robust is None else round(100 * robust, 2),
        "additional_data": False,
        "number_forward_passes": 1,
        "unreliable": bool(flags),
        "footnote": "two-class suite (APGD-CE + FAB + Square) at the operating threshold, 8-bit delivery; "
        "docs/AUDIT.md",
        # Ours.
        "audit_version": AUDIT_VERSION,
        "detector": meta.get("detector", {"name": target.name}),
        "threshold": t,
        "threshold_source": meta.get("threshold_source", "default"),
        "data": {
            "n_fake": int((labels == FAKE_INDEX).sum()),
            "n_real": int((labels != FAKE_INDEX).sum()),
            "folder": data.root.name,
        },
        "profile": meta.get("profile"),
        "seed": seed,
        "shard_size": shard_size,
        "defense": None if target.defense is None else target.defense.describe(),
        "threats": rows,
        "sanity": {"unreliable": bool(flags), "flags": flags},
        "summary": summary_sentence(target.name, t, clean, rows),
        "per_image": per_image,
        "environment": meta.get("environment", {}),
    }


def summary_sentence(name: str, threshold: float, clean: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The report's first line: the owner's headline figures, each with its interval."""

    def pct(r: dict[str, Any]) -> str:
        if r["rate"] is None:
            return "n/a"
        lo, hi = r["ci95"]
        return f"{100 * r['rate']:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"

    parts = [f"At threshold {threshold:.4g}, {name} lets {pct(clean['evasion'])} of clean fakes pass as real"]
    parts.append(f"flags {pct(clean['false_alarms'])} of reals as fake")
    laundering = [r for r in rows if r["family"] == "laundering" and r["metrics"]["evasion"]["rate"] is not None]
    if laundering:
        worst = max(laundering, key=lambda r: r["metrics"]["evasion"]["rate"])
        parts.append(f"after {worst['id']} {pct(worst['metrics']['evasion'])} of fakes pass")
    curve = [r for r in rows if r["name"] == "linf_suite" and r["metrics"]["evasion"]["rate"] is not None]
    if curve:
        top = max(curve, key=lambda r: r["params"]["eps"])
        parts.append(f"under a white-box attack at {eps_text(top['params']['eps'])} {pct(top['metrics']['evasion'])}")
    l2 = [r for r in rows if r["name"] == "l2_suite" and r["metrics"]["evasion"]["rate"] is not None]
    if l2:
        top = max(l2, key=lambda r: r["params"]["rms"])
        parts.append(f"under an L2 attack of radius {top['eps_l2']:.3g} ({eps_text(top['params']['rms'])} per pixel) "
                     f"{pct(top['metrics']['evasion'])}")  # fmt: skip
    return "; ".join(parts) + " (95 % intervals)."
