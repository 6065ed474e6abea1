"""``deepfake-guard methods``: the registered attacks and purifiers with their parameters (``--markdown``: the
tables of docs/METHODS.md, which a test keeps equal to this output)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("methods", help="list the attacks and purifiers with their parameters")
    p.add_argument("--markdown", action="store_true", help="print the parameter tables of docs/METHODS.md")


def markdown() -> str:
    from models import attacks
    from models import purify as purifiers
    from models.methods import markdown_table

    return (
        "## Attacks (`POST /attack`, `deepfake-guard attack`)\n\n"
        + markdown_table(list(attacks.ATTACKS_REGISTRY))
        + "\n\n## Purifiers (`POST /purify`, `deepfake-guard purify`)\n\n"
        + markdown_table(list(purifiers.PURIFIERS_REGISTRY))
        + "\n"
    )


def run(args: argparse.Namespace) -> int:
    from models import attacks
    from models import purify as purifiers

    if args.markdown:
        print(markdown(), end="")
        return 0
    for title, methods in (("attacks", attacks.ATTACKS_REGISTRY), ("purifiers", purifiers.PURIFIERS_REGISTRY)):
        print(f"{title}:")
        for m in methods:
            print(f"  {m.name}: {m.description}")
            if m.presets:
                print(f"      preset: {', '.join(m.presets)} (default {m.default_preset})")
            for p in m.public_params:
                default = p.default_doc or m.default_of(p)
                shown = "the preset's" if default is None else default
                print(f"      {p.field}: {p.kind.__name__} {p.bounds_text()}, default {shown}. {p.description}")
    return 0
