"""GET /methods: the registered attacks and purifiers with their parameters, from their declarations
(models/methods.py; the same ones `deepfake-guard methods` and docs/METHODS.md print). The page builds its
attack and defence choices from it, so an attack registered later is offered without touching the page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.routes.attack import DEFENSE_PREFIX
from app.schemas import AttackDeclaration, MethodParameter, MethodsResponse, PurifierDeclaration
from models import attacks
from models import purify as purifiers
from models.attacks.adaptive import ADAPTIVE_PARAMS
from models.methods import Method, Param

router = APIRouter(tags=["attacks"])


def parameter(p: Param, default: Any) -> MethodParameter:
    """A declaration as the API takes it: the API's own lower bound where it is above the function's (eps)."""
    low = p.low if p.api_low is None else p.api_low
    low_open = p.low_open if p.api_low_open is None else p.api_low_open
    return MethodParameter(
        name=p.field,
        type=p.kind.__name__,  # type: ignore[arg-type]
        description=p.description,
        default=None if callable(default) else default,
        default_doc=p.default_doc,
        minimum=low,
        exclusive_minimum=low_open and low is not None,
        maximum=p.high,
        choices=list(p.choices) if p.choices else None,
        nullable=p.nullable,
    )


def parameters(m: Method) -> list[MethodParameter]:
    return [parameter(p, m.default_of(p)) for p in m.request_params]


@router.get(
    "/methods",
    response_model=MethodsResponse,
    summary="The attacks and purifiers this service offers, with their parameters",
)
def list_methods() -> MethodsResponse:
    return MethodsResponse(
        attacks=[
            AttackDeclaration(name=a.name, summary=a.description, parameters=parameters(a), step_budget=a.sync_budget)
            for a in attacks.ATTACKS_REGISTRY
        ],
        purifiers=[
            PurifierDeclaration(
                name=p.name,
                summary=p.description,
                parameters=parameters(p),
                iterative=p.iterative,
                randomized=p.randomized,
            )
            for p in purifiers.PURIFIERS_REGISTRY
        ],
        defense_prefix=DEFENSE_PREFIX,
        adaptive=[parameter(p, p.default) for p in ADAPTIVE_PARAMS],
    )
