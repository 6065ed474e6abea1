"""Adversarial attacks on [0, 1] pixels: plain functions, keyword-only hyper-parameters (STYLE rule 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.attacks.cw import CW_PRESETS, CWResult, cw_l2
from models.attacks.fgsm import fgsm
from models.attacks.pgd import pgd

ATTACKS: dict[str, Callable[..., Any]] = {"fgsm": fgsm, "pgd": pgd, "cw_l2": cw_l2}

__all__ = ["ATTACKS", "CW_PRESETS", "CWResult", "cw_l2", "fgsm", "pgd"]
