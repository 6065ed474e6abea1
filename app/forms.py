"""Form fields derived from the method registries: what POST /attack and POST /purify accept, and their OpenAPI.

Each public parameter of each registered method becomes one optional form field (methods that share a
parameter share its field), typed and bounded as declared (``models.methods.Param``). A request's values are
then checked twice over: the form's bounds by FastAPI (422 naming the field), and the method's own declaration
by ``Method.resolve`` (the same check the function itself makes).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Form
from pydantic import BeforeValidator, Field

from app.errors import InvalidParameter, applicable_params
from models.methods import DECIMAL_TEXT, FRACTION_TEXT, Method, Param, number_from_text

_DECIMAL = DECIMAL_TEXT
_INTEGER = re.compile(r"[+-]?\d+")
_NON_FINITE = frozenset({"nan", "inf", "infinity"})


def _number_text(value: Any, pattern: re.Pattern[str], what: str) -> Any:
    # A form value is text, which pydantic's lax mode reads generously ("1_000" is 1000, " 5 " is 5): only the
    # plain literals are let through to its number parsing and the declared bounds.
    if isinstance(value, str) and value.lower().lstrip("+-") in _NON_FINITE:
        raise ValueError("input should be a finite number")
    if isinstance(value, str) and not pattern.fullmatch(value):
        raise ValueError(f"must be {what}")
    return value


def _strict_bool(value: Any) -> Any:
    if isinstance(value, str):
        if value in ("true", "false"):
            return value == "true"
        raise ValueError("must be true or false")  # not yes/on/1: a typo must not pass as a choice
    return value


def _float_text(value: Any) -> Any:
    if isinstance(value, str) and FRACTION_TEXT.fullmatch(value):
        return number_from_text(value)  # 8/255, as the CLI takes it (docs/ATTACKS.md)
    return _number_text(value, _DECIMAL, "a decimal number such as 0.5, 2 or 1e-3, or a fraction such as 8/255")


#: Form-field validators: numbers as plain decimal literals (floats also as fractions, ``8/255``), booleans as
#: true / false (a 422 names the field). Bounds go on the number type inside
#: (``Annotated[Annotated[float, Field(le=1)] | None, STRICT_FLOAT, Form()]``): beside the validator they would leave
#: the OpenAPI schema's minimum and maximum out.
STRICT_FLOAT = BeforeValidator(_float_text)
STRICT_INT = BeforeValidator(lambda v: _number_text(v, _INTEGER, "a whole number such as 10"))
STRICT_BOOL = BeforeValidator(_strict_bool)


@dataclass
class FormField:
    """One form field: the parameter declarations behind it (one per method that takes it)."""

    name: str
    declarations: list[tuple[str, Param]] = field(default_factory=list)
    owners: dict[str, Method] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [m for m, _ in self.declarations]

    def defaults(self) -> list[tuple[str, str]]:
        out = []
        for method, p in self.declarations:
            if p.default_doc is not None:
                out.append((method, p.default_doc))
                continue
            value = self.owners[method].default_of(p) if method in self.owners else p.default
            out.append((method, "the preset's" if value is None else str(value)))
        return out

    def annotation(self) -> Any:
        first = self.declarations[0][1]
        kinds = {p.kind for _, p in self.declarations}
        if len(kinds) > 1:
            raise ValueError(f"form field {self.name!r} is declared with different types by {self.methods}")
        meanings: dict[str, list[str]] = {}  # an eps is an L-inf budget for most attacks, an L2 one for others
        for method, p in self.declarations:
            meanings.setdefault(p.description, []).append(method)
        said = [first.description] + [f"{', '.join(ms)}: {d}" for d, ms in meanings.items() if d != first.description]
        description = (
            f"{first.description[:1].upper()}{'; '.join(said)[1:]}. "
            + "; ".join(f"{m}: default {d}" for m, d in self.defaults())
            + " (docs/METHODS.md)."
        )
        if first.kind is str:
            choices = tuple(dict.fromkeys(c for _, p in self.declarations for c in p.choices or ()))
            return Annotated[Literal[choices] | None, Form(description=description)]  # type: ignore[valid-type]
        if first.kind is bool:
            return Annotated[bool | None, STRICT_BOOL, Form(description=description)]
        lows = [
            (p.low if p.api_low is None else p.api_low, p.low_open if p.api_low_open is None else p.api_low_open)
            for _, p in self.declarations
        ]
        highs = [p.high for _, p in self.declarations]
        bounds: dict[str, Any] = {}
        known = [(low, low_open) for low, low_open in lows if low is not None]
        if len(known) == len(lows):  # the widest bound any method accepts; each method checks its own
            low, low_open = min(known, key=lambda b: (b[0], not b[1]))
            bounds["gt" if low_open else "ge"] = int(low) if first.kind is int else low
        tops = [h for h in highs if h is not None]
        if len(tops) == len(highs):
            bounds["le"] = int(max(tops)) if first.kind is int else max(tops)
        if first.kind is float:
            number = Annotated[float, Field(allow_inf_nan=False, **bounds)]
            return Annotated[number | None, STRICT_FLOAT, Form(description=description)]  # type: ignore[valid-type]
        whole = Annotated[int, Field(**bounds)]
        return Annotated[whole | None, STRICT_INT, Form(description=description)]  # type: ignore[valid-type]


@dataclass
class MethodForm:
    """The derived fields of a set of methods, and how to read a request's values for one of them."""

    fields: dict[str, FormField]
    #: (method, field) -> keyword of the method's function
    keywords: dict[tuple[str, str], str]

    def parameters(self) -> list[inspect.Parameter]:
        """Keyword-only parameters for an endpoint's signature (FastAPI reads the form from them)."""
        return [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.annotation())
            for name, f in self.fields.items()
        ]

    def given(self, method: Method, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values a request set for ``method``, by keyword; fields the method does not take are refused."""
        allowed = {f for (m, f) in self.keywords if m == method.name}
        chosen = applicable_params(method.name, {k: values.get(k) for k in self.fields}, allowed)
        return {self.keywords[(method.name, f)]: v for f, v in chosen.items()}

    def resolve(self, method: Method, values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """``given`` plus ``extra``, resolved (``resolve_given``)."""
        return self.resolve_given(method, {**self.given(method, values), **extra})

    @staticmethod
    def resolve_given(method: Method, given: Mapping[str, Any]) -> dict[str, Any]:
        """The values ``given`` returned, resolved by the method's declaration (``Method.resolve``); a ValueError
        becomes a 422 naming the form field."""
        try:
            return method.resolve(given, by_field=True)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from exc


def set_signature(
    endpoint: Callable[..., Any], own: list[tuple[str, Any, Any]], *forms: MethodForm
) -> Callable[..., Any]:
    """Give ``endpoint`` (which takes ``**values``) the signature FastAPI reads its parameters from: the route's
    own ``(name, annotation, default)`` ones, then each form's derived fields, all keyword-only."""
    kw = inspect.Parameter.KEYWORD_ONLY
    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, kw, annotation=a, default=d) for n, a, d in own]
        + [parameter for form in forms for parameter in form.parameters()]
    )
    return endpoint


def method_form(methods: Iterable[Method], *, skip: frozenset[str] = frozenset(), prefix: str = "") -> MethodForm:
    """Fields for every public parameter (and ``preset`` where a method has presets) of ``methods``, in
    registration and declaration order; ``skip`` names fields the route declares itself. ``prefix`` goes before
    every field name: an adaptive attack's defence shares parameter names with attacks (``max_iterations``), so
    its parameters are ``defense_max_iterations`` and so on."""
    fields: dict[str, FormField] = {}
    keywords: dict[tuple[str, str], str] = {}
    for m in methods:
        for p in m.request_params:
            if p.field in skip:
                continue
            name = prefix + p.field
            entry = fields.setdefault(name, FormField(name))
            entry.declarations.append((m.name, p))
            entry.owners[m.name] = m
            keywords[(m.name, name)] = p.name
    return MethodForm(fields=fields, keywords=keywords)
