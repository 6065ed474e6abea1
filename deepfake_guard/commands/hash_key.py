"""``deepfake-guard hash-key``: the sha256 digest of an API key, as DFG_API_KEYS and DFG_API_KEYS_FILE take it.

The service stores digests only (app/auth.py); the key itself goes to the client. ``--new`` makes a random key
(256 bits from the operating system's generator) and prints it with its digest.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "hash-key",
        help="print the sha256 digest of an API key (for DFG_API_KEYS / DFG_API_KEYS_FILE)",
        description="Print the sha256 hex digest of an API key: read from --key, or from standard input (one "
        "line; keeps the key out of the shell history), or made with --new (printed as: KEY DIGEST).",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key", default=None, help="the key (default: read one line from standard input)")
    group.add_argument("--new", action="store_true", help="make a new random key; print it and its digest")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def run(args: argparse.Namespace) -> int:
    if args.new:
        key = secrets.token_urlsafe(32)
        print(key, digest(key))
        return 0
    key = args.key if args.key is not None else sys.stdin.readline().rstrip("\r\n")
    if not key.strip():
        print("error: the key is empty", file=sys.stderr)
        return 2
    print(digest(key.strip()))
    return 0
