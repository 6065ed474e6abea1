"""Adversarial attacks on [0, 1] pixels: plain functions, keyword-only hyper-parameters (STYLE rule 3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.attacks.cw import CW_LIMITS, CW_PRESETS, CWResult, check_cw, cw_l2
from models.attacks.fgsm import check_fgsm, fgsm
from models.attacks.pgd import check_pgd, pgd

ATTACKS: dict[str, Callable[..., Any]] = {"fgsm": fgsm, "pgd": pgd, "cw_l2": cw_l2}
#: Each attack's hyper-parameter checks, to refuse a request before any work (or queueing) happens.
CHECKS: dict[str, Callable[..., None]] = {"fgsm": check_fgsm, "pgd": check_pgd, "cw_l2": check_cw}

__all__ = ["ATTACKS", "CHECKS", "CW_LIMITS", "CW_PRESETS", "CWResult", "cw_l2", "fgsm", "pgd"]
