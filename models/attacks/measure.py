"""Honest attack results: craft, deliver as an 8-bit file, then judge the file.

Gandhi & Jain evaluated their adversarial images after saving them as JPEG (quality 75): what fools a
detector in float32 may not survive the 256 levels of a real file. So success here is decided on the
delivered image (PNG: 8-bit rounding; ``jpeg75``: rounding then JPEG at quality 75), by the *target*
detector, which may differ from the *source* the perturbation was crafted on (black-box transfer).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from models.attacks import registry
from models.attacks._common import eval_mode
from models.attacks.adaptive import Defended, Defense, judge, resolve_defense
from models.detector import CLASS_NAMES, DEFAULT_THRESHOLD, FAKE_INDEX, at_threshold, verdict
from models.facecrop import NoFace, check_crop, find_faces
from models.faces import Box
from models.images import decode_image, encode_jpeg, encode_png, psnr, quantize_8bit
from models.progress import ProgressFn, StopFn, check_stop
from models.zoo import Zoo

#: How an adversarial image is delivered (and judged): its file format, and that file's media type.
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg75": "image/jpeg"}
SAVE_FORMATS: tuple[str, ...] = tuple(MEDIA_TYPES)


@dataclass
class AttackReport:
    """One image's outcome. Norms and PSNR compare the delivered image with the clean input."""

    method: str
    save_format: str
    label_before: str
    label_after: str
    p_fake_before: float
    p_fake_after: float
    l2: float
    linf: float
    psnr: float  # dB; inf when the delivered image equals the input
    iterations: int
    success: bool
    source_p_fake_before: float | None = None
    source_p_fake_after: float | None = None
    #: Adaptive attacks only (``models.attacks.adaptive``): the defence, and the target's verdicts on each purified
    #: resubmission of the delivered file; ``success`` is then ``success_any`` (the attacker may resubmit).
    defense: dict[str, Any] | None = None
    adv: Tensor = field(default_factory=lambda: torch.empty(0), repr=False)  # delivered 3 x H x W, on CPU
    encoded: bytes = field(default=b"", repr=False)  # the delivered file's bytes (PNG or JPEG)

    def metrics(self) -> dict[str, Any]:
        """Everything but the pixels and bytes, for CSV rows and JSON answers.

        JSON has no infinity: the PSNR of an unchanged image (inf) is reported as None."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in self.__dict__.items()
            if k not in ("adv", "encoded")
        }


def deliver(adv: Tensor, save_format: str) -> tuple[Tensor, list[bytes]]:
    """What the user receives: 8-bit PNG (lossless after rounding) or JPEG quality 75, decoded again."""
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"unknown save_format {save_format!r}; choose one of {list(SAVE_FORMATS)}")
    images = quantize_8bit(adv.detach()).cpu()
    if save_format == "png":
        return images, [encode_png(im) for im in images]
    blobs = [encode_jpeg(im, quality=75) for im in images]
    return torch.stack([decode_image(b) for b in blobs]), blobs


#: Shrink factors ``fit_l2_budget`` tries, largest first (the last, 0, delivers the image itself).
_SHRINK = (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.25, 0.0)


def fit_l2_budget(x: Tensor, adv: Tensor, eps: float) -> Tensor:
    """``adv`` scaled towards ``x`` just enough (``x + s (adv - x)``, ``s`` the largest of ``_SHRINK``) that its 8-bit
    rounding lies within the L2 ball of radius ``eps`` around ``x``.

    Rounding to 8 bits moves each pixel by up to half a level, which can carry an L2 attack's file outside its budget
    (an L-inf one's cannot leave an L-inf ball when ``x`` is on the 8-bit grid). Where even ``x``'s own rounding lies
    outside (an ``x`` off the grid, e.g. a resized image, and a tiny eps), the rounding of ``adv`` is delivered as is,
    and the report's ``l2`` says how far it lies."""
    view = (-1, *[1] * (x.dim() - 1))
    out = adv.clone()
    todo = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for s in _SHRINK:
        candidate = x + (adv - x) * s
        fits = todo & ((quantize_8bit(candidate) - x).flatten(1).norm(dim=1) <= eps)
        out = torch.where(fits.view(view), candidate, out)
        todo &= ~fits
        if not bool(todo.any()):
            break
    return out


def perturbation_picture(x: Tensor, adv: Tensor) -> Tensor:
    """The perturbation made visible: 0.5 grey + delta scaled so the largest |delta| of each image
    reaches 0 or 1. Works on 3 x H x W or N x 3 x H x W; an unperturbed image gives flat grey."""
    delta = (adv - x).float()
    batched = delta.dim() == 4
    d = delta if batched else delta[None]
    peak = d.abs().flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None, None]
    pic = (0.5 + 0.5 * d / peak).clamp(0, 1)
    return pic if batched else pic[0]


def _p_fake(model: nn.Module, x: Tensor) -> Tensor:
    with eval_mode(model), torch.no_grad():
        return torch.softmax(model(x).float(), dim=1)[:, FAKE_INDEX]


def resolve_attack(
    method: str, params: Mapping[str, Any], save_format: str
) -> tuple[registry.AttackSpec, dict[str, Any], bool]:
    """The attack's declaration, its resolved keyword arguments and whether it is targeted; every ValueError a
    request can cause (method, parameters, delivery) before any work."""
    spec = registry.get(method)
    kwargs = spec.resolve(params)
    if save_format not in SAVE_FORMATS:
        raise ValueError(f"unknown save_format {save_format!r}; choose one of {list(SAVE_FORMATS)}")
    return spec, kwargs, bool(kwargs.get("targeted", False))


def attack_and_measure(
    method: str,
    target: nn.Module,
    x: Tensor,
    *,
    source: nn.Module | None = None,
    params: Mapping[str, Any],
    save_format: str = "png",
    y: Tensor | None = None,
    defense: Defense | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    generator: torch.Generator | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    source_threshold: float | None = None,
) -> list[AttackReport]:
    """Craft on ``source`` (default: ``target``), deliver as ``save_format``, judge on ``target``.

    Every verdict is ``p_fake >= threshold`` (the target's operating threshold, as /detect applies it;
    ``source_threshold`` for the source's own verdicts, default the same), and the attack is crafted on the detector
    seen at that threshold (``models.detector.AtThreshold``), so its margins and early stops aim at the verdict
    that is judged. Success means that verdict changed (or, targeted, reached its goal).

    With a ``defense`` the attack is adaptive: it is crafted on ``purify -> source`` (``adaptive.Defended``: BPDA
    and EOT), and judged as the defender sees the delivered file, through ``defense.resubmissions`` real purifier
    runs the attack did not see (``adaptive.judge``). The reference label is still the bare target's clean
    verdict (or ``y``).

    ``y=None`` attacks each detector's own clean verdict: the source's for crafting, the target's for
    judging. A given ``y`` is the true label (untargeted: success when the target's delivered label differs
    from ``y``) or, with ``targeted=True`` in ``params``, the target label (success when it is reached).
    ``targeted=True`` with ``y=None`` aims at the other class than the *target* detector's clean verdict
    (the detectors have two classes), on the source too: success is the target's delivered label being
    that class, i.e. the same test as untargeted. What differs from untargeted is only the crafting, and
    only in black-box runs where source and target disagree on the clean image (untargeted then pushes
    away from the source's verdict, which may already be the goal). With one detector, or two that agree,
    the two modes are the same attack in exact arithmetic: for two classes, towards one class is away from
    the other (FGSM/PGD: the same gradient sign; CW-L2: the same objective). In float32 FGSM/PGD can differ
    on images the detector is very sure of: there the untargeted cross-entropy's gradient through the
    winning logit rounds to zero (softmax 1.0), the targeted one keeps it.
    """
    spec, kwargs, targeted = resolve_attack(method, params, save_format)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
    x = x.detach()
    src_threshold = threshold if source_threshold is None else source_threshold
    crafter = at_threshold(target, threshold) if source is None else at_threshold(source, src_threshold)

    p_before = _p_fake(target, x)
    label_before = verdict(p_before, threshold)
    src_before = _p_fake(source, x) if source is not None else None
    if y is None and targeted:
        y = 1 - label_before  # the other class of the target's clean verdict (FAKE_INDEX 0, real 1)
    y_craft = (
        y.to(x.device)
        if y is not None
        else (label_before if src_before is None else verdict(src_before, src_threshold))
    )

    check_stop(should_stop, 0)
    attacked: nn.Module = crafter if defense is None else Defended(crafter, defense, should_stop=should_stop)
    crafted = spec.run(attacked, x, y_craft, kwargs, progress=progress, should_stop=should_stop, generator=generator)
    iterations = crafted.iterations

    adv = crafted.adv
    if spec.norm == "l2" and "eps" in kwargs and save_format == "png":
        adv = fit_l2_budget(x, adv.detach(), float(kwargs["eps"]))
    delivered, blobs = deliver(adv, save_format)
    on_device = delivered.to(x.device)
    p_after = _p_fake(target, on_device)
    label_after = verdict(p_after, threshold)
    src_after = _p_fake(source, on_device) if source is not None else None
    reference = label_before if y is None else y.to(x.device)

    def fooled(labels: Tensor) -> Tensor:
        return labels == reference if targeted else labels != reference

    success = fooled(label_after)
    outcomes: list[dict[str, Any] | None] = [None] * len(x)
    if defense is not None:
        judged = judge(target, on_device, defense, fake_index=FAKE_INDEX, should_stop=should_stop)
        runs = torch.stack([fooled(verdict(p, threshold)) for p in judged.p_fake])  # R x N
        success = runs.any(dim=0)
        described = defense.describe()
        outcomes = [
            {
                **described,
                "p_fake_after": judged.p_fake[:, i].tolist(),
                "success_any": bool(runs[:, i].any()),
                "success_all": bool(runs[:, i].all()),
                "success_rate": float(runs[:, i].float().mean()),
                "bare_success": bool(fooled(label_after)[i]),
            }
            for i in range(len(x))
        ]

    delta = (on_device - x).flatten(1)
    l2 = delta.norm(dim=1).tolist()
    linf = delta.abs().amax(dim=1).tolist()
    psnrs = psnr(x, on_device).tolist()
    reports = []
    for i in range(len(x)):
        reports.append(
            AttackReport(
                method=method,
                save_format=save_format,
                label_before=CLASS_NAMES[int(label_before[i])],
                label_after=CLASS_NAMES[int(label_after[i])],
                p_fake_before=float(p_before[i]),
                p_fake_after=float(p_after[i]),
                l2=l2[i],
                linf=linf[i],
                psnr=psnrs[i] if math.isfinite(psnrs[i]) else math.inf,
                iterations=int(iterations[i]),
                success=bool(success[i]),
                source_p_fake_before=None if src_before is None else float(src_before[i]),
                source_p_fake_after=None if src_after is None else float(src_after[i]),
                defense=outcomes[i],
                adv=delivered[i],
                encoded=blobs[i],
            )
        )
    return reports


@dataclass
class AttackOutcome:
    """One image attacked on detectors of a zoo, ready to answer with: ``body`` holds the report's metrics, the
    detectors (name and sha256), the delivered file's media type and the magnified perturbation (base64 PNG)."""

    report: AttackReport
    body: dict[str, Any]

    @property
    def delivered_png(self) -> bytes:
        """The delivered pixels, losslessly (for jpeg75: the decoded JPEG that success was judged on)."""
        return encode_png(self.report.adv.float().cpu())


def check_adaptive_crop(crop: str, adaptive: bool) -> None:
    """An adaptive attack (one with a defence) works on the whole image; ``crop="faces"`` attacks the bare detector
    only. A ValueError says so (the API checks it before reading the upload, a queued job again here)."""
    if adaptive and check_crop(crop) == "faces":
        raise ValueError("crop=faces attacks the bare detector: an adaptive attack (defense) needs crop=none")


def attack_in_zoo(
    zoo: Zoo,
    x: Tensor,
    *,
    method: str,
    target: str,
    source: str | None,
    params: Mapping[str, Any],
    save_format: str,
    defense: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    crop: str = "none",
    faces: Sequence[Box] | None = None,
    threshold: float | None = None,
    seed: int = 0,
) -> AttackOutcome:
    """Attack one image (3 x H x W, [0, 1]) on the zoo's ``target``, crafted on ``source`` (a black-box transfer
    when it names another detector), delivered as ``save_format``; ``defense`` (``adaptive.resolve_defense``'s
    input) makes it adaptive. The one code path of the API's synchronous attacks and the workers' queued ones.

    ``crop="faces"`` attacks the photo's faces through their crops (``models.attacks.face_attack``): ``faces`` are
    the upload's boxes when the caller has found them already (found here otherwise); none is a ``NoFace``.

    ``threshold``: the request's operating threshold for the target's verdicts (None: the target checkpoint's
    fitted one, else 0.5, as /detect decides); the source judges by its own checkpoint's. The attack's random draws
    (random starts, CW's initial noise) come from a generator seeded with ``seed``: the same request gives the same
    answer, whatever ran in the process before."""
    tgt = zoo.get(target)
    src = zoo.get(source) if source and source != target else None
    cut, cut_source = tgt.meta.operating_point(threshold)
    src_cut = src.meta.operating_point()[0] if src is not None else None
    generator = torch.Generator(device=zoo.device).manual_seed(seed)
    defended = resolve_defense(defense)
    check_adaptive_crop(crop, defended is not None)
    face_body: dict[str, Any] = {"faces_before": None, "faces": None}  # the answer's fields whatever the crop
    if check_crop(crop) == "faces":
        from models.attacks.face_attack import attack_faces  # it builds on this module

        on_device = x.to(zoo.device)
        boxes = list(faces) if faces is not None else find_faces(on_device)
        if not boxes:
            raise NoFace("crop=faces: no face was found in the image")
        done = attack_faces(
            method, tgt.detector, on_device, boxes, source=src.detector if src else None, params=params,
            save_format=save_format, progress=progress, should_stop=should_stop, threshold=cut,
            source_threshold=src_cut, generator=generator,
        )  # fmt: skip
        report = done.report
        face_body = {
            "faces_before": [v.to_json(cut) for v in done.before],
            "faces": [v.to_json(cut) for v in done.after],
        }
    else:
        report = attack_and_measure(
            method, tgt.detector, x.unsqueeze(0).to(zoo.device), source=src.detector if src else None,
            params=params, save_format=save_format, defense=defended, progress=progress, should_stop=should_stop,
            threshold=cut, source_threshold=src_cut, generator=generator,
        )[0]  # fmt: skip
    body = {**report.metrics(), "crop": crop, **face_body, "threshold": cut, "threshold_source": cut_source}
    body["target"] = {"name": tgt.name, "sha256": tgt.sha256}
    body["source"] = {"name": (src or tgt).name, "sha256": (src or tgt).sha256}
    body["adversarial_media_type"] = MEDIA_TYPES[save_format]
    picture = perturbation_picture(x.float().cpu(), report.adv.float().cpu())
    body["perturbation"] = base64.b64encode(encode_png(picture)).decode()
    return AttackOutcome(report=report, body=body)
