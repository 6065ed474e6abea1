"""Adversarial attacks on [0, 1] pixels: plain functions with keyword-only hyper-parameters, each declared once in
the attack registry (``models.attacks.registry``; how to add one: docs/CONTRIBUTING.md).

Importing this package registers the built-in attacks.
"""

from __future__ import annotations

# Each module registers its attack when imported, in this order, which the registry keeps (the API's and the
# CLI's listings, the docs' tables).
# isort: off
from models.attacks.fgsm import FGSM as FGSM, fgsm as fgsm
from models.attacks.pgd import PGD as PGD, pgd as pgd
from models.attacks.cw import CW_L2 as CW_L2, CW_LIMITS as CW_LIMITS, CW_PRESETS as CW_PRESETS
from models.attacks.cw import CWResult as CWResult, cw_l2 as cw_l2
from models.attacks.apgd import APGD_CE as APGD_CE, apgd_ce as apgd_ce
from models.attacks.apgd import APGD_CE_L2 as APGD_CE_L2, apgd_ce_l2 as apgd_ce_l2
from models.attacks.fab import FAB as FAB, fab as fab
from models.attacks.fab import FAB_L2 as FAB_L2, fab_l2 as fab_l2
from models.attacks.square import SQUARE as SQUARE, square as square

# isort: on
from models.attacks.registry import ATTACKS_REGISTRY as ATTACKS_REGISTRY
from models.attacks.registry import AttackSpec as AttackSpec
from models.attacks.registry import Crafted as Crafted
from models.attacks.registry import attack_steps as attack_steps
from models.attacks.registry import check_params as check_params
from models.attacks.registry import get as get
from models.attacks.registry import names as names
from models.attacks.registry import register as register
from models.attacks.registry import resolve_params as resolve_params
from models.attacks.registry import tunable_params as tunable_params
from models.attacks.registry import unregister as unregister
from models.methods import FunctionView
from models.methods import Param as Param

#: Name -> attack function, live over the registry.
ATTACKS = FunctionView(ATTACKS_REGISTRY)
