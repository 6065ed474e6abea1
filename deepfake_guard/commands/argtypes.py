"""Argument types of the command line: numbers a person types, checked where argparse reads them, so a bad value is
one ``error:`` line naming the flag, never a traceback."""

from __future__ import annotations

import argparse

from models.methods import number_from_text


def float_text(text: str) -> float:
    """A float flag: ``0.03`` or ``8/255`` (``models.methods.number_from_text``)."""
    try:
        return number_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_eps(text: str) -> float:
    """``8/255`` or ``0.03``: a finite number in (0, 1]."""
    try:
        value = number_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"eps: {exc}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"eps must be in (0, 1] pixel units, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """A count that must be at least 1 (``--batch``, ``-n``): an ``error:`` line otherwise, never a traceback."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_threshold(text: str) -> float:
    """An operating threshold in [0, 1] (``0.7``; fractions accepted)."""
    try:
        value = number_from_text(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"threshold: {exc}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1], got {text!r}")
    return value
