"""Audit profiles: which threats an audit runs, with which budgets (docs/AUDIT.md, "Profiles"). Every budget can be
overridden, and the record states the ones used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models.audit.threats import get
from models.methods import eps_text

#: The L-inf budgets of the white-box curve (pixel units).
QUICK_EPS = (2 / 255, 4 / 255, 8 / 255)
STANDARD_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
#: The L2 budgets of the white-box L2 curve, per pixel (root-mean-square change, pixel units): each row's radius is
#: this times sqrt(3 H W) of the detector's input (``models.audit.threats.l2_radius``). CIFAR-10's customary L2 0.5
#: on 32 x 32 is 2.3/255 per pixel in these units.
QUICK_L2 = (1 / 255, 2 / 255)
STANDARD_L2 = (0.5 / 255, 1 / 255, 2 / 255, 4 / 255)
#: EOT samples per step of an adaptive attack through a randomised defence: AutoAttack's version for randomised
#: models ("rand") averages 20 (Croce & Hein 2020); the quick profile's 2 is only a smoke test, and says so.
EOT_RANDOMIZED = {"quick": 2, "standard": 20}


@dataclass(frozen=True)
class Threat:
    """One row of an audit: a declared threat with resolved parameters."""

    name: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, name: str, given: Mapping[str, Any] | None = None) -> Threat:
        resolved = get(name).resolve(given or {})
        return cls(name, tuple(sorted(resolved.items())))

    @property
    def spec(self) -> Any:
        return get(self.name)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def id(self) -> str:
        """A stable name: ``jpeg(quality=75)``, ``linf_suite(budget=quick, eps=8/255)``."""
        parts = [f"{k}={eps_text(v) if k in ('eps', 'rms') else v}" for k, v in self.params]
        return f"{self.name}({', '.join(parts)})" if parts else self.name

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        out = {"id": self.id, "name": self.name, "family": spec.family, "description": spec.description,
               "params": self.kwargs}  # fmt: skip
        if "eps" in out["params"]:
            out["eps_text"] = eps_text(out["params"]["eps"])
        if "rms" in out["params"]:
            out["rms_text"] = eps_text(out["params"]["rms"])
        return out


PROFILES = ("quick", "standard")

#: Threat parameters set by the audit's own options (the curves' budgets, the transfer sources), never by an override:
#: refused rather than silently replaced, by ``parse_overrides`` and ``threats_for`` alike.
OWN_OPTIONS = {
    ("linf_suite", "eps"): "the white-box curve's budgets are the audit's eps (--eps)",
    ("l2_suite", "rms"): "the white-box L2 curve's budgets are the audit's l2_rms (--l2-rms)",
    ("transfer", "source"): "the transfer sources are the audit's transfer_from (--transfer-from)",
}


def threats_for(
    profile: str,
    *,
    sources: Sequence[str] = (),
    defense: bool = False,
    eps: Sequence[float] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    l2: Sequence[float] | None = None,
) -> list[Threat]:
    """The threats of ``profile``; transfer rows for each of ``sources``; the adaptive row when a ``defense`` is given.
    ``eps`` replaces the white-box L-inf curve's budgets, ``l2`` the L2 curve's (per pixel); ``overrides`` (threat
    name -> parameters) any threat's other parameters."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    quick = profile == "quick"
    over = {k: dict(v) for k, v in (overrides or {}).items()}
    for name, given in over.items():
        get(name)  # a typo names the choices
        for param in given:
            if (name, param) in OWN_OPTIONS:
                raise ValueError(f"{name}.{param}: {OWN_OPTIONS[name, param]}, not an override")
    budget = "quick" if quick else "standard"
    curve = tuple(eps) if eps else (QUICK_EPS if quick else STANDARD_EPS)
    rows: list[tuple[str, dict[str, Any]]] = [("clean", {}), ("sanity", {})]
    for q in (90, 75, 50) if quick else (95, 90, 75, 50, 30):
        rows.append(("resave_jpeg", {"quality": q}))
    rows += [("rescale", {"factor": 0.5}), ("blur", {"sigma": 1.0}), ("noise", {"sigma": 0.02}), ("shared_online", {})]
    rows += [("linf_suite", {"eps": e, "budget": budget}) for e in curve]
    rows += [
        ("l2_suite", {"rms": r, "budget": budget}) for r in (tuple(l2) if l2 else (QUICK_L2 if quick else STANDARD_L2))
    ]
    rows.append(("eot_pgd", {"eps": 4 / 255, "steps": 10 if quick else 50, "eot": 4 if quick else 16}))
    rows += [("transfer", {"source": s, "eps": 8 / 255, "steps": 10 if quick else 50}) for s in sources]
    if defense:
        rows.append(("through_defense", {"eps": 4 / 255, "steps": 10 if quick else 50}))
    threats = []
    for name, params in rows:
        merged = {**params, **over.get(name, {})}
        threats.append(Threat.of(name, merged))
    return threats


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``THREAT.PARAM=VALUE`` items (the command line's ``--set``, the service's ``set``) as ``threats_for`` takes
    them: a VALUE that reads as JSON is that value (``50``, ``0.5``, ``true``), any other is text. A malformed item
    is a ValueError naming it; ``threats_for`` checks the threats, parameters and values."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        threat, dot, param = key.partition(".")
        if not (eq and dot and threat and param):
            raise ValueError(f"set {item!r}: expected THREAT.PARAM=VALUE, e.g. eot_pgd.steps=50")
        if (threat, param) in OWN_OPTIONS:
            raise ValueError(f"set {item!r}: {OWN_OPTIONS[threat, param]}")
        parsed: Any
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(threat, {})[param] = parsed
    return out


def audit_defense(given: Mapping[str, Any] | None, profile: str) -> dict[str, Any] | None:
    """The defence an audit attacks through, as ``models.attacks.adaptive.resolve_defense`` takes it (None for none):
    ``given``, with a randomised purifier's EOT samples set to the profile's ``EOT_RANDOMIZED`` count when none is
    given, a defensible count that the record then states (docs/AUDIT.md, "Profiles")."""
    from models import purify as purifiers
    from models.attacks.adaptive import NO_DEFENSE

    if not given or given.get("method", NO_DEFENSE) == NO_DEFENSE:
        return None
    out = dict(given)
    if out.get("eot_samples") is None and purifiers.get(out["method"]).randomized:
        out["eot_samples"] = EOT_RANDOMIZED[profile]
    return out


def audit_threats(
    profile: str, *, sources: Sequence[str] = (), overrides: Mapping[str, Mapping[str, Any]] | None = None, **more: Any
) -> list[Threat]:
    """An audit's threats: ``threats_for`` (``more``: its ``defense``, ``eps`` and ``l2``), and an override of a threat
    the audit does not run is a ValueError naming it (``transfer.steps`` with no transfer source would be dropped while
    the record listed it), on the command line and in the service alike."""
    threats = threats_for(profile, sources=sources, overrides=overrides, **more)
    unused = sorted(set(overrides or {}) - {t.name for t in threats})
    if unused:
        needs = {"transfer": "a transfer source (transfer_from, --transfer-from)",
                 "through_defense": "a defence (defense, --defense)"}  # fmt: skip
        why = "".join(f"; {name} needs {needs[name]}" for name in unused if name in needs)
        raise ValueError(f"set {unused}: this audit runs no such threat{why}")
    return threats
