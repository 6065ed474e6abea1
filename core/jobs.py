"""The parameters of each kind of job: written by the route that enqueues it, read by the worker that runs it.

A job's RQ kwargs hold ``params`` as the flat JSON of one of these (``to_json``); ``from_json`` reads it back.
Parameter values are already resolved and validated by the method's declaration (``models.methods``) when the
job is made, so the worker runs exactly what the API accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from core import keys

#: A face box as jobs carry it: ``[x0, y0, x1, y1]`` in upload pixels (``models.faces.Box``).
FaceBox = tuple[int, int, int, int]


def _crop_json(crop: str, faces: tuple[FaceBox, ...]) -> dict[str, Any]:
    """``crop`` and ``faces`` in a job's JSON, left out when ``crop`` is ``none``: a job queued before a worker is
    upgraded (or by an older API) reads the same either way."""
    return {} if crop == "none" else {"crop": crop, "faces": [list(b) for b in faces]}


def _threshold_json(threshold: float | None) -> dict[str, Any]:
    """The request's operating threshold in a job's JSON, left out when the request gave none (the worker then
    takes the checkpoint's, else 0.5: ``models.detector.operating_threshold``)."""
    return {} if threshold is None else {"threshold": float(threshold)}


def _pop_threshold(rest: dict[str, Any]) -> float | None:
    value = rest.pop("threshold", None)
    return None if value is None else float(value)


def _pop_crop(rest: dict[str, Any]) -> dict[str, Any]:
    crop = str(rest.pop("crop", "none"))
    faces = tuple(tuple(int(v) for v in b) for b in rest.pop("faces", None) or ())
    return {"crop": crop, "faces": faces}


def working_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size an iterative purifier works at: the image scaled to fit ``max_side`` (DFG_PURIFY_MAX_SIDE), never up."""
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def check_working_size(height: int, width: int, *, max_side: int, min_side: int) -> None:
    """A ValueError when DIP would work on a side under ``min_side`` (DFG_DIP_MIN_SIDE): its network halves the
    image five times, and a 10000 x 16 image at 512 x 1 came out flat and meaningless, reported as finished."""
    h, w = working_size(height, width, max_side)
    if min(h, w) < min_side:
        raise ValueError(
            f"the image is {width} x {height} pixels and DIP would work on it at {w} x {h} (fitted to "
            f"{max_side} pixels, DFG_PURIFY_MAX_SIDE); its shorter side must be at least {min_side} there "
            "(DFG_DIP_MIN_SIDE): crop or pad the image to a less elongated shape"
        )


@dataclass(frozen=True)
class PurifyJob:
    """Purify one image with ``method`` (a registered purifier) and its keyword arguments ``params``.

    ``crop="faces"`` purifies the face boxes ``faces`` (found by the API on the upload) and pastes them back;
    ``threshold`` is the request's operating threshold for the result's labels (None: each checkpoint's own)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    crop: str = "none"
    faces: tuple[FaceBox, ...] = ()
    threshold: float | None = None

    KIND: ClassVar[str] = "purify"
    FUNC: ClassVar[str] = keys.PURIFY_FUNC

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.params, **_crop_json(self.crop, self.faces),
                **_threshold_json(self.threshold)}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PurifyJob:
        rest = dict(data)
        method = str(rest.pop("method"))
        threshold = _pop_threshold(rest)
        return cls(method=method, **_pop_crop(rest), params=rest, threshold=threshold)  # type: ignore[arg-type]

    def batch_signature(self) -> tuple[Any, ...]:
        """Jobs batch together only when every setting matches (a DIP seed included: it fixes the network); a
        crop=faces job works on its own boxes and batches with none."""
        own = (self.crop, self.faces) if self.crop != "none" else ()
        return (self.method, tuple(sorted(self.params.items())), *own)


@dataclass(frozen=True)
class AttackJob:
    """Attack one image on detector ``target``, crafted on ``source`` (black-box when it differs), delivered as
    ``save_format``; ``params`` are the attack's keyword arguments. ``defense`` makes it adaptive: the purifier's
    name under ``method``, its keyword arguments and the adaptive settings (``models.attacks.adaptive``); jobs
    queued before it existed carry none. ``threshold``: the request's operating threshold for the target's
    verdicts (None: the checkpoint's, else 0.5)."""

    method: str
    target: str
    source: str
    save_format: str
    params: dict[str, Any] = field(default_factory=dict)
    crop: str = "none"
    faces: tuple[FaceBox, ...] = ()
    defense: dict[str, Any] | None = None
    threshold: float | None = None

    KIND: ClassVar[str] = "attack"
    FUNC: ClassVar[str] = keys.ATTACK_FUNC
    _OWN: ClassVar[tuple[str, ...]] = ("method", "target", "source", "save_format")

    def __post_init__(self) -> None:
        clash = sorted(set(self.params) & {*self._OWN, "crop", "faces", "defense", "threshold"})
        if clash:
            raise ValueError(f"attack parameters may not be named {clash}")

    def to_json(self) -> dict[str, Any]:
        out = {"method": self.method, "target": self.target, "source": self.source,
               "save_format": self.save_format, **self.params, **_crop_json(self.crop, self.faces),
               **_threshold_json(self.threshold)}  # fmt: skip
        if self.defense is not None:
            out["defense"] = dict(self.defense)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttackJob:
        rest = dict(data)
        own = {k: str(rest.pop(k)) for k in cls._OWN}
        defense = rest.pop("defense", None)
        threshold = _pop_threshold(rest)
        return cls(**own, **_pop_crop(rest), params=rest, defense=None if defense is None else dict(defense),  # type: ignore[arg-type]
                   threshold=threshold)  # fmt: skip
