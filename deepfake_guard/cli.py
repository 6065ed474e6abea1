"""Entry point of the ``deepfake-guard`` console script.

Subcommand modules are imported only when chosen, so ``deepfake-guard --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (
        "deepfake_guard.commands.serve",
        "run the API (with a bundled Redis and worker unless a Redis URL is set)",
    ),
    "worker": ("deepfake_guard.commands.worker", "run an RQ worker that executes purification and attack jobs"),
    "make-demo-data": ("deepfake_guard.commands.make_demo_data", "write the offline demo ImageFolder dataset"),
    "train": ("deepfake_guard.commands.train", "train a detector on an ImageFolder and write a checkpoint"),
    "import-detector": (
        "deepfake_guard.commands.import_detector",
        "import a detector's weights (safetensors or state dict) as a served checkpoint",
    ),
    "attack": ("deepfake_guard.commands.attack", "attack a detector on an image or a folder of images"),
    "purify": ("deepfake_guard.commands.purify", "purify an image locally (no server needed)"),
    "hash-key": ("deepfake_guard.commands.hash_key", "print the sha256 digest of an API key (DFG_API_KEYS)"),
    "methods": ("deepfake_guard.commands.methods_list", "list the attacks and purifiers with their parameters"),
    "robustness": (
        "deepfake_guard.commands.robustness",
        "robust accuracy under the two-class standard suite (APGD-CE + FAB + Square), RobustBench-shaped JSON",
    ),
    "audit": (
        "deepfake_guard.commands.audit",
        "a detector owner's robustness audit of a data set: clean, laundering, attacks, sanity flags, HTML report",
    ),
    "evaluate": (
        "deepfake_guard.commands.evaluate",
        "regenerate the paper's tables: clean, attacks, Lipschitz detectors, DIP",
    ),
}


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:  # type: ignore[type-arg]
    parser = argparse.ArgumentParser(
        prog="deepfake-guard", description="Detect, red-team and defend deepfake detectors."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser, sub


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = build_parser()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    args.cli_argv = argv  # the command as given, for provenance (sys.argv is the caller's when argv is passed)
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args))


if __name__ == "__main__":
    raise SystemExit(main())
