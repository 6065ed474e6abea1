"""Command-line flags derived from the method registries: ``--method`` and one ``--flag`` per parameter.

The same declarations make the API's forms (``app.forms``): a parameter is spelt ``--step-size`` here and
``step_size`` there. Flags default to unset, so a method's own defaults (or its preset's) apply, and a flag of
another method is refused with the same message the API gives.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from deepfake_guard.commands.argtypes import float_text
from models.methods import Method, Param


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_method_arguments(
    parser: argparse.ArgumentParser, methods: Iterable[Method], *, default: str, skip: frozenset[str] = frozenset()
) -> None:
    """``--method`` with the registered names, then a group of flags for every public parameter."""
    methods = list(methods)
    parser.add_argument(
        "--method",
        choices=[m.name for m in methods],
        default=default,
        help="; ".join(f"{m.name}: {m.description}" for m in methods),
    )
    group = parser.add_argument_group("method parameters (default: the method's own, see docs/CONTRIBUTING.md)")
    _add_flags(group, methods, skip=skip, prefix="", dest="param_")


def _add_flags(group: Any, methods: Sequence[Method], *, skip: frozenset[str], prefix: str, dest: str) -> None:
    """One ``--<prefix><field>`` flag (stored as ``<dest><field>``) per public parameter of ``methods``."""
    seen: dict[str, list[str]] = {}
    declared: dict[str, Param] = {}
    for m in methods:
        for p in m.request_params:
            if p.field in skip:
                continue
            seen.setdefault(p.field, []).append(m.name)
            declared.setdefault(p.field, p)
    for field, p in declared.items():
        kind: Any = _bool if p.kind is bool else float_text if p.kind is float else p.kind
        choices = sorted({c for m in methods for q in m.request_params if q.field == field for c in q.choices or ()})
        group.add_argument(
            _flag(prefix + field), dest=f"{dest}{field}", type=kind, choices=choices or None, default=None,
            help=f"{p.description} ({', '.join(seen[field])})",
        )  # fmt: skip


#: Defence flags are the purifier's parameters with this prefix (``--defense-max-iterations``: CW-L2 and DIP both
#: have a ``max_iterations``).
DEFENSE_PREFIX = "defense_"


def add_defense_arguments(parser: argparse.ArgumentParser) -> None:
    """``--defense`` (none or a registered purifier), its parameters as ``--defense-<parameter>``, and the adaptive
    attack's own settings (``--eot-samples``, ``--resubmissions``, ``--bpda-iterations``)."""
    from models import purify as purifiers
    from models.attacks.adaptive import ADAPTIVE_PARAMS, NO_DEFENSE

    methods = list(purifiers.PURIFIERS_REGISTRY)
    group = parser.add_argument_group("adaptive attack: attack through a purifier (docs/ATTACKS.md)")
    group.add_argument(
        "--defense", choices=[NO_DEFENSE, *(m.name for m in methods)], default=NO_DEFENSE,
        help="attack purify -> detect (BPDA, EOT) and judge through resubmitted purifier runs",
    )  # fmt: skip
    for p in ADAPTIVE_PARAMS:
        kind = float_text if p.kind is float else p.kind
        group.add_argument(_flag(p.name), dest=f"adaptive_{p.name}", type=kind, default=None, help=p.description)
    _add_flags(group, methods, skip=frozenset(), prefix=DEFENSE_PREFIX, dest="defense_param_")


def given_defense(args: argparse.Namespace) -> dict[str, Any] | None:
    """The defence the flags ask for, as ``models.attacks.adaptive.resolve_defense`` takes it (None for none);
    a defence flag without a defence, or one the purifier does not take, is a ValueError naming it."""
    from models import purify as purifiers
    from models.attacks.adaptive import NO_DEFENSE

    values = vars(args)
    adaptive = {k[len("adaptive_") :]: v for k, v in values.items() if k.startswith("adaptive_") and v is not None}
    chosen = {k[len("defense_param_") :]: v for k, v in values.items() if k.startswith("defense_param_")}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if args.defense == NO_DEFENSE:
        stray = [_flag(k) for k in adaptive] + [_flag(DEFENSE_PREFIX + k) for k in chosen]
        if stray:
            raise ValueError(f"{stray} apply only with --defense")
        return None
    spec = purifiers.get(args.defense)
    own = {p.field: p.name for p in spec.request_params}
    stray = sorted(set(chosen) - set(own))
    if stray:
        flags = [_flag(DEFENSE_PREFIX + f) for f in stray]
        raise ValueError(f"{flags} do not apply to --defense {spec.name}")
    return {"method": spec.name, **adaptive, **{own[f]: v for f, v in chosen.items()}}


def given_params(args: argparse.Namespace, method: Method) -> dict[str, Any]:
    """The flags a user set, by the method's keyword names; a flag the method does not take is a ValueError."""
    chosen = {k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    own = {p.field: p.name for p in method.request_params}
    stray = sorted(set(chosen) - set(own))
    if stray:
        flags = [_flag(f) for f in stray]
        raise ValueError(f"{flags} do not apply to --method {method.name} (it takes {[_flag(f) for f in own]})")
    return {own[f]: v for f, v in chosen.items()}
