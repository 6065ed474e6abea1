from __future__ import annotations

import argparse

from workers import worker


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("worker", help="run an RQ worker that executes purification and attack jobs")
    worker.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return worker.run(args)
