"""Command-line flags derived from the method registries: ``--method`` and one ``--flag`` per parameter.

The same declarations make the API's forms (``app.forms``): a parameter is spelt ``--step-size`` here and
``step_size`` there. Flags default to unset, so a method's own defaults (or its preset's) apply, and a flag of
another method is refused with the same message the API gives.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

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
    seen: dict[str, list[str]] = {}
    declared: dict[str, Param] = {}
    for m in methods:
        for p in m.request_params:
            if p.field in skip:
                continue
            seen.setdefault(p.field, []).append(m.name)
            declared.setdefault(p.field, p)
    for field, p in declared.items():
        kind: Any = _bool if p.kind is bool else p.kind
        choices = sorted({c for m in methods for q in m.request_params if q.field == field for c in q.choices or ()})
        group.add_argument(
            _flag(field), dest=f"param_{field}", type=kind, choices=choices or None, default=None,
            help=f"{p.description} ({', '.join(seen[field])})",
        )  # fmt: skip


def given_params(args: argparse.Namespace, method: Method) -> dict[str, Any]:
    """The flags a user set, by the method's keyword names; a flag the method does not take is a ValueError."""
    chosen = {k[len("param_") :]: v for k, v in vars(args).items() if k.startswith("param_") and v is not None}
    own = {p.field: p.name for p in method.request_params}
    stray = sorted(set(chosen) - set(own))
    if stray:
        flags = [_flag(f) for f in stray]
        raise ValueError(f"{flags} do not apply to --method {method.name} (it takes {[_flag(f) for f in own]})")
    return {own[f]: v for f, v in chosen.items()}
