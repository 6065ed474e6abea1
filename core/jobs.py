"""The parameters of each kind of job: written by the route that enqueues it, read by the worker that runs it.

A job's RQ kwargs hold ``params`` as the flat JSON of one of these (``to_json``); ``from_json`` reads it back.
Parameter values are already resolved and validated by the method's declaration (``models.methods``) when the
job is made, so the worker runs exactly what the API accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from core import keys


@dataclass(frozen=True)
class PurifyJob:
    """Purify one image with ``method`` (a registered purifier) and its keyword arguments ``params``."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    KIND: ClassVar[str] = "purify"
    FUNC: ClassVar[str] = keys.PURIFY_FUNC

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.params}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PurifyJob:
        rest = dict(data)
        return cls(method=str(rest.pop("method")), params=rest)

    def batch_signature(self) -> tuple[Any, ...]:
        """Jobs batch together only when every setting matches (a DIP seed included: it fixes the network)."""
        return (self.method, tuple(sorted(self.params.items())))


@dataclass(frozen=True)
class AttackJob:
    """Attack one image on detector ``target``, crafted on ``source`` (black-box when it differs), delivered as
    ``save_format``; ``params`` are the attack's keyword arguments. ``defense`` makes it adaptive: the purifier's
    name under ``method``, its keyword arguments and the adaptive settings (``models.attacks.adaptive``); jobs
    queued before it existed carry none."""

    method: str
    target: str
    source: str
    save_format: str
    params: dict[str, Any] = field(default_factory=dict)
    defense: dict[str, Any] | None = None

    KIND: ClassVar[str] = "attack"
    FUNC: ClassVar[str] = keys.ATTACK_FUNC
    _OWN: ClassVar[tuple[str, ...]] = ("method", "target", "source", "save_format")

    def __post_init__(self) -> None:
        clash = sorted(set(self.params) & {*self._OWN, "defense"})
        if clash:
            raise ValueError(f"attack parameters may not be named {clash}")

    def to_json(self) -> dict[str, Any]:
        out = {"method": self.method, "target": self.target, "source": self.source,
               "save_format": self.save_format, **self.params}  # fmt: skip
        if self.defense is not None:
            out["defense"] = dict(self.defense)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttackJob:
        rest = dict(data)
        own = {k: str(rest.pop(k)) for k in cls._OWN}
        defense = rest.pop("defense", None)
        return cls(**own, params=rest, defense=None if defense is None else dict(defense))
