"""Attacks on the faces of a full photo (``crop=faces``, docs/FACES.md): crafted through the face crops, delivered
as the whole photo, judged by finding the faces again on the delivered file.

Each face gets a copy of the photo scored on its own crop (``models.facecrop.FaceCrops``); the attack runs on the
copies at the photo's resolution, and only box ``i``'s pixels are kept from copy ``i``, so nothing outside the
face boxes changes (a random start outside a box, as PGD's, is dropped too). Every face is pushed the same way:
away from the photo's verdict (its most fake face's), or towards the other class with ``targeted``, since the
photo is fake as long as one face is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.attacks.measure import AttackReport, _p_fake, deliver, resolve_attack
from models.detector import CLASS_NAMES, DEFAULT_THRESHOLD, Detector, at_threshold, verdict
from models.facecrop import NO_FACE, FaceCrops, FaceVerdict, find_faces, label_of, merge_faces, most_fake, score_faces
from models.faces import Box
from models.images import psnr
from models.progress import ProgressFn, StopFn, check_stop


@dataclass
class FaceAttack:
    """The photo's report (p_fake of its most fake face; ``p_fake_after`` NaN and ``label_after`` ``no_face`` when
    no face is found on the delivered file) and each face's verdict before (upload's boxes) and after (the
    delivered file's boxes)."""

    report: AttackReport
    before: list[FaceVerdict]
    after: list[FaceVerdict]


def attack_faces(
    method: str,
    target: Detector,
    x: Tensor,
    boxes: Sequence[Box],
    *,
    source: Detector | None = None,
    params: Mapping[str, Any],
    save_format: str = "png",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    find: Callable[[Tensor], list[Box]] = find_faces,
    threshold: float = DEFAULT_THRESHOLD,
    source_threshold: float | None = None,
    generator: torch.Generator | None = None,
) -> FaceAttack:
    """Attack the faces ``boxes`` of one photo ``x`` (3 x H x W, [0, 1], on the detectors' device).

    Success needs a face on the delivered file: untargeted, its verdict differs from the clean photo's;
    targeted, it is the other class. A file on which no face is found any more is not a success: the service
    answers ``no_face`` for it, not ``real``. Verdicts are at ``threshold`` (the source's at ``source_threshold``,
    default the same), as in ``models.attacks.measure.attack_and_measure``."""
    spec, kwargs, targeted = resolve_attack(method, params, save_format)
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected one image 3 x H x W, got shape {tuple(x.shape)}")
    x = x.detach()
    tgt = FaceCrops(target, boxes)
    src = FaceCrops(source, boxes) if source is not None else None
    copies = x.unsqueeze(0).expand(len(boxes), -1, -1, -1).contiguous()

    faces_before = _p_fake(tgt, copies)
    p_before = faces_before.max()
    src_threshold = threshold if source_threshold is None else source_threshold
    label_before = int(verdict(p_before[None], threshold)[0])
    src_before = _p_fake(src, copies).max() if src is not None else None
    craft_from = label_before if src_before is None else int(verdict(src_before[None], src_threshold)[0])
    goal = 1 - label_before if targeted else craft_from
    y = torch.full((len(boxes),), goal, dtype=torch.long, device=x.device)

    check_stop(should_stop, 0)
    crafter = at_threshold(tgt, threshold) if src is None else at_threshold(src, src_threshold)
    crafted = spec.run(crafter, copies, y, kwargs, progress=progress, should_stop=should_stop, generator=generator)
    adv = merge_faces(x, crafted.adv.detach(), boxes)
    delivered, blobs = deliver(adv[None], save_format)
    file = delivered[0].to(x.device)

    after_boxes = find(file)
    after = score_faces(target, file, after_boxes)
    p_after = most_fake(after)
    src_after = most_fake(score_faces(source, file, after_boxes)) if source is not None else None
    label_after = label_of(p_after, threshold)
    before_name = CLASS_NAMES[label_before]
    if label_after == NO_FACE:
        success = False
    else:
        success = label_after == CLASS_NAMES[goal] if targeted else label_after != before_name

    delta = (file - x).flatten()
    quality = float(psnr(x[None], file[None])[0])
    report = AttackReport(
        method=method,
        save_format=save_format,
        label_before=before_name,
        label_after=label_after,
        p_fake_before=float(p_before),
        p_fake_after=math.nan if p_after is None else p_after,
        l2=float(delta.norm()),
        linf=float(delta.abs().max()),
        psnr=quality if math.isfinite(quality) else math.inf,
        iterations=max(crafted.iterations),
        success=bool(success),
        source_p_fake_before=None if src_before is None else float(src_before),
        source_p_fake_after=None if source is None else (math.nan if src_after is None else src_after),
        adv=delivered[0],
        encoded=blobs[0],
    )
    before = [FaceVerdict(b, float(p)) for b, p in zip(boxes, faces_before.tolist(), strict=True)]
    return FaceAttack(report=report, before=before, after=after)
