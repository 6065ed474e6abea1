"""The audit's threats: one declaration each (name, family, typed parameters, the function that judges a shard of
images under it), in the style of the method registries (models/methods.py). docs/AUDIT.md lists them.

A threat function gets the images of one shard and returns, per image, the p_fake the deployed detector gives after
the threat (for an attack: the delivered 8-bit file's, at worst for the defender) and details for the record. Attacks
aim at the other class than the image's true label: fakes towards "real" (evasion), reals towards "fake" (false
alarms), reported apart. Every verdict is at the detector's operating threshold (``AuditTarget.threshold``), and the
attacks are crafted on the detector seen at that threshold (``models.detector.at_threshold``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.attacks.adaptive import Defense
from models.attacks.measure import attack_and_measure
from models.attacks.pgd import PGD
from models.attacks.registry import AttackSpec
from models.audit import launder
from models.detector import FAKE_INDEX, Detector, at_threshold
from models.evaluation.robustness import BUDGETS, SUITE, SUITE_L2, run_suite
from models.images import encode_png
from models.methods import Param

#: The laundering the "survives laundering" attack is judged after: a sharing site's downscale and JPEG, a pair the
#: attack's random draws (scales 0.5-1.0, qualities 50-95) match with probability zero.
HELD_OUT_FACTOR, HELD_OUT_QUALITY = 0.7, 70


@dataclass
class AuditTarget:
    """The detector under audit, its operating threshold, and what the threats may use besides it."""

    name: str
    detector: Detector
    threshold: float
    #: Other detectors (name -> (detector, its own threshold)): transfer attacks are crafted on them.
    sources: dict[str, tuple[Detector, float]] = field(default_factory=dict)
    #: The defence an adaptive attack goes through (``models.attacks.adaptive.resolve_defense``), if any.
    defense: Defense | None = None


@dataclass
class Shard:
    """The images of one shard: each at its own size (``native``), fitted to the detector (``fitted``, N x 3 x h x w),
    their true labels, and the shard's seed (fixed by the plan, whoever runs the shard)."""

    native: list[Tensor]
    fitted: Tensor
    labels: Tensor
    seed: int


@dataclass
class Judged:
    """Per image: p_fake after the threat, and details (JSON-able). ``gallery``: delivered adversarial fakes that
    evaded, as PNG bytes by image position, for the report (never in the JSON record)."""

    p_fake: list[float]
    details: list[dict[str, Any]]
    gallery: dict[int, bytes] = field(default_factory=dict)


ThreatFn = Callable[[AuditTarget, Shard, Mapping[str, Any]], Judged]


@dataclass(frozen=True)
class ThreatSpec:
    name: str
    family: str
    description: str
    fn: ThreatFn
    params: tuple[Param, ...] = ()
    #: An attack (gradients, an eps) rather than a transform any file meets.
    attack: bool = False
    #: Crafted on another detector, named by the ``source`` parameter (a detector's name, checked when it runs).
    needs_source: bool = False

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The threat's parameters with defaults filled in and each validated; unknown names are a ValueError."""
        known = {p.name for p in self.params} | ({"source"} if self.needs_source else set())
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"threat {self.name!r} takes {sorted(known)}, not {unknown}")
        out = {p.name: p.validate(given.get(p.name, p.default), label=f"{self.name}.{p.name}") for p in self.params}
        if self.needs_source:
            source = given.get("source")
            if not isinstance(source, str) or not source:
                raise ValueError(f"threat {self.name!r} needs a source detector's name, got {source!r}")
            out["source"] = source
        return out


THREATS: dict[str, ThreatSpec] = {}
FAMILIES = (
    "clean", "laundering", "white-box Linf", "white-box L2", "survives laundering", "transfer", "through a defence",
    "sanity",
)  # fmt: skip


def register(spec: ThreatSpec) -> ThreatSpec:
    if spec.name in THREATS:
        raise ValueError(f"threat {spec.name!r} is already registered")
    if spec.family not in FAMILIES:
        raise ValueError(f"threat {spec.name!r}: family must be one of {FAMILIES}, got {spec.family!r}")
    THREATS[spec.name] = spec
    return spec


def get(name: str) -> ThreatSpec:
    try:
        return THREATS[name]
    except KeyError:
        raise ValueError(f"unknown threat {name!r}; choose one of {sorted(THREATS)}") from None


# --- helpers ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _p_fake(model: nn.Module, x: Tensor) -> Tensor:
    return torch.softmax(model(x).float(), dim=1)[:, FAKE_INDEX].cpu()


def _device(target: AuditTarget) -> torch.device:
    return target.detector.get_buffer("mean").device


@torch.no_grad()
def fit_native(target: AuditTarget, images: Sequence[Tensor]) -> Tensor:
    """Images at their own sizes, each fitted by the detector as /detect fits it: N x 3 x h x w on its device."""
    device = _device(target)
    return torch.stack([target.detector.fitting.apply(x[None].to(device))[0] for x in images])


def _score_native(target: AuditTarget, images: Sequence[Tensor]) -> list[float]:
    """p_fake of images at their own sizes, each fitted by the detector as /detect fits it."""
    return _p_fake(target.detector.prefitted(), fit_native(target, images)).tolist()


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _eps_param(default: float) -> Param:
    return Param("eps", float, "L-inf budget in pixel units", default=default, low=0, high=1, low_open=True)


def _steps_param(default: int) -> Param:
    return Param("steps", int, "attack steps", default=default, low=1, high=10_000)


# --- clean and sanity ------------------------------------------------------------------------------------------------


def _clean(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    p = _p_fake(target.detector.prefitted(), shard.fitted.to(_device(target))).tolist()
    return Judged(p_fake=p, details=[{} for _ in p])


def _sanity(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    """What the sanity flags are computed from (models/audit/sanity.py): two forward passes of the same images, and the
    input gradient of the cross-entropy towards the true label."""
    view = target.detector.prefitted()
    x = shard.fitted.to(_device(target))
    first, second = _p_fake(view, x), _p_fake(view, x)
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(view(xg).float(), shard.labels.to(x.device), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg)
    norms = grad.flatten(1).norm(dim=1)
    details = [
        {"forward_gap": float(abs(a - b)), "grad_norm": float(g) if torch.isfinite(g) else None}
        for a, b, g in zip(first.tolist(), second.tolist(), norms, strict=True)
    ]
    return Judged(p_fake=first.tolist(), details=details)


CLEAN = register(ThreatSpec("clean", "clean", "the images as they are", _clean))
SANITY = register(
    ThreatSpec("sanity", "sanity", "two forward passes and the input gradient, for the sanity flags", _sanity)
)


# --- laundering ------------------------------------------------------------------------------------------------------


def _laundering(transform: Callable[[Tensor, Mapping[str, Any], torch.Generator], Tensor]) -> ThreatFn:
    def run(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
        out = [transform(x, params, _generator(shard.seed + i)) for i, x in enumerate(shard.native)]
        p = _score_native(target, out)
        return Judged(p_fake=p, details=[{} for _ in p])

    return run


JPEG = register(ThreatSpec(
    "resave_jpeg", "laundering", "re-saved as JPEG",
    _laundering(lambda x, p, g: launder.jpeg(x, p["quality"])),
    (Param("quality", int, "JPEG quality", default=75, low=1, high=95),),
))  # fmt: skip
RESCALE = register(ThreatSpec(
    "rescale", "laundering", "downscaled and scaled back up",
    _laundering(lambda x, p, g: launder.rescale(x, p["factor"])),
    (Param("factor", float, "scale of the small copy", default=0.5, low=0.05, high=1),),
))  # fmt: skip
BLUR = register(ThreatSpec(
    "blur", "laundering", "Gaussian blur",
    _laundering(lambda x, p, g: launder.blur(x, p["sigma"])),
    (Param("sigma", float, "standard deviation in pixels", default=1.0, low=0.1, high=10),),
))  # fmt: skip
NOISE = register(ThreatSpec(
    "noise", "laundering", "Gaussian noise, seeded per image",
    _laundering(lambda x, p, g: launder.noise(x, p["sigma"], g)),
    (Param("sigma", float, "standard deviation in pixel units", default=0.02, low=0.001, high=0.5),),
))  # fmt: skip
SHARED_ONLINE = register(ThreatSpec(
    "shared_online", "laundering", "a sharing site's downscale and JPEG",
    _laundering(lambda x, p, g: launder.shared_online(x, p["factor"], p["quality"])),
    (Param("factor", float, "downscale", default=0.75, low=0.05, high=1),
     Param("quality", int, "JPEG quality", default=75, low=1, high=95)),
))  # fmt: skip


# --- attacks ---------------------------------------------------------------------------------------------------------


def _suite_judged(target: AuditTarget, shard: Shard, suite: Sequence[AttackSpec], eps: float, budget: str) -> Judged:
    """A suite (``models.evaluation.robustness.run_suite``: each attack on the images the earlier ones did not flip,
    delivered as 8-bit PNG) on the shard. Per image: the fooling file's p_fake, or the most adverse of the attempts;
    which attack fooled it and at what distance in the suite's norm; the fooling fakes for the gallery."""
    device = _device(target)
    x, y = shard.fitted.to(device), shard.labels.to(device)
    result = run_suite(target.detector.prefitted(), x, y, eps=eps, budget=BUDGETS[budget], seed=shard.seed,
                       threshold=target.threshold, suite=suite)  # fmt: skip
    norm = suite[0].norm  # a suite's attacks share their norm
    details: list[dict[str, Any]] = [
        {"fooled_by": by, norm: dist} for by, dist in zip(result.fooled_by, result.distance, strict=True)
    ]
    gallery = {i: encode_png(adv.float()) for i, adv in result.delivered.items() if int(y[i]) == FAKE_INDEX}
    return Judged(p_fake=result.p_fake_after, details=details, gallery=gallery)


def _linf_suite(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    return _suite_judged(target, shard, SUITE, params["eps"], params["budget"])


LINF_SUITE = register(ThreatSpec(
    "linf_suite", "white-box Linf",
    "APGD-CE + FAB + Square, worst case per image (the two-class AutoAttack suite: docs/ATTACKS.md)", _linf_suite,
    (_eps_param(8 / 255), Param("budget", str, "attack budgets", default="quick", choices=tuple(BUDGETS))),
    attack=True,
))  # fmt: skip


def l2_radius(rms: float, fitted_shape: Sequence[int]) -> float:
    """The L2 budget of an image the detector sees at ``fitted_shape`` (C x H x W) whose per-pixel root-mean-square
    change is ``rms``: ``rms * sqrt(C H W)``. An L2 radius means little without the image size (the same radius is
    a large change on a 64 px image, a small one at 224 px), so the audit's L2 budgets are given per pixel and each
    row states the radius it used (docs/AUDIT.md, "White-box L2")."""
    return float(rms) * math.sqrt(math.prod(fitted_shape))


def _l2_suite(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    eps = l2_radius(params["rms"], shard.fitted.shape[1:])
    return _suite_judged(target, shard, SUITE_L2, eps, params["budget"])


L2_SUITE = register(ThreatSpec(
    "l2_suite", "white-box L2",
    "APGD-CE + FAB in L2, worst case per image; the radius is rms x sqrt(pixels x 3) of the fitted image", _l2_suite,
    (Param("rms", float, "per-pixel root-mean-square budget in pixel units (8-bit levels / 255)", default=2 / 255,
           low=0, high=1, low_open=True),
     Param("budget", str, "attack budgets", default="quick", choices=tuple(BUDGETS))),
    attack=True,
))  # fmt: skip


def _eot_pgd(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    """PGD through random launderings (``launder.LaunderingEOT``), delivered at the detector's input size, then judged
    after the held-out laundering (``HELD_OUT_FACTOR``, ``HELD_OUT_QUALITY``) that a sharing site would apply."""
    det, device = target.detector, _device(target)
    view = det.prefitted()
    x, y = shard.fitted.to(device), shard.labels.to(device)
    eot = launder.LaunderingEOT(at_threshold(view, target.threshold), samples=params["eot"],
                                generator=_generator(shard.seed))  # fmt: skip
    gen = torch.Generator(device=device).manual_seed(shard.seed)
    crafted = PGD.run(eot, x, y, PGD.resolve({"eps": params["eps"], "steps": params["steps"]}), generator=gen).adv
    delivered = [launder.quantize_8bit(a) for a in crafted.detach()]
    laundered = [launder.shared_online(a, HELD_OUT_FACTOR, HELD_OUT_QUALITY) for a in delivered]
    p_bare = _p_fake(view, torch.stack(delivered).to(device)).tolist()
    p = _score_native(target, laundered)
    return Judged(p_fake=p, details=[{"p_fake_unlaundered": b} for b in p_bare])


EOT_PGD = register(ThreatSpec(
    "eot_pgd", "survives laundering",
    "PGD with EOT over resizing and JPEG, judged after a downscale + JPEG it did not draw", _eot_pgd,
    (_eps_param(4 / 255), _steps_param(10),
     Param("eot", int, "launderings averaged per step", default=4, low=1, high=64)),
    attack=True,
))  # fmt: skip


def _transfer(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    """PGD crafted on another loaded detector (a black-box attacker's surrogate), at each image's own size (every
    detector fits it itself), delivered as 8-bit PNG and judged by the audited detector."""
    source = target.sources.get(params["source"])
    if source is None:
        raise ValueError(f"transfer source {params['source']!r} is not loaded; loaded: {sorted(target.sources)}")
    src, src_threshold = source
    device = _device(target)
    p: list[float] = []
    details: list[dict[str, Any]] = []
    for i, x in enumerate(shard.native):
        xi, yi = x[None].to(device), shard.labels[i : i + 1].to(device)
        gen = torch.Generator(device=device).manual_seed(shard.seed + i)
        crafted = attack_and_measure(
            PGD.name, target.detector, xi, source=src, params={"eps": params["eps"], "steps": params["steps"]}, y=yi,
            generator=gen, threshold=target.threshold, source_threshold=src_threshold,
        )[0]  # fmt: skip
        p.append(crafted.p_fake_after)
        details.append({"source_p_fake_after": crafted.source_p_fake_after})
    return Judged(p_fake=p, details=details)


TRANSFER = register(ThreatSpec(
    "transfer", "transfer", "PGD crafted on another detector (black-box transfer)", _transfer,
    (_eps_param(8 / 255), _steps_param(10)), attack=True, needs_source=True,
))  # fmt: skip


def _through_defense(target: AuditTarget, shard: Shard, params: Mapping[str, Any]) -> Judged:
    """The adaptive attack (BPDA + EOT) through the chosen purifier, judged through the defence's resubmissions
    (models/attacks/adaptive.py): per image, the worst resubmission's p_fake for the defender."""
    if target.defense is None:
        raise ValueError("the through-a-defence threat needs a defence (--defense)")
    det, device = target.detector, _device(target)
    view = det.prefitted()
    x, y = shard.fitted.to(device), shard.labels.to(device)
    gen = torch.Generator(device=device).manual_seed(shard.seed)
    reports = attack_and_measure(
        PGD.name, view, x, params={"eps": params["eps"], "steps": params["steps"]}, y=y, generator=gen,
        defense=target.defense, threshold=target.threshold,
    )  # fmt: skip
    p, details = [], []
    for i, r in enumerate(reports):
        runs = (r.defense or {}).get("p_fake_after") or [r.p_fake_after]
        fake = int(shard.labels[i]) == FAKE_INDEX
        p.append(min(runs) if fake else max(runs))
        details.append({"resubmissions": runs, "bare_p_fake_after": r.p_fake_after})
    return Judged(p_fake=p, details=details)


THROUGH_DEFENSE = register(ThreatSpec(
    "through_defense", "through a defence", "adaptive PGD through the purifier, judged through its resubmissions",
    _through_defense, (_eps_param(4 / 255), _steps_param(10)), attack=True,
))  # fmt: skip
