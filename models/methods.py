"""Typed method declarations: the one place an attack's or a purifier's parameters are described.

Each attack and purifier is declared once (``models.attacks.registry``, ``models.purify.registry``) with its
function and its ``Param`` list: type, default, bounds, choices, a one-line description. Everything else is
derived from that declaration: the function's own argument checks, the API's form fields and OpenAPI, the
command-line flags, the worker's dispatch and the docs' parameter tables (docs/CONTRIBUTING.md).

Validation is strict on purpose (docs/ATTACKS.md, "Parameters"): a boolean must be a real boolean (the string
``"no"`` is not False), numbers may be Python or numpy scalars but never NaN or infinite, and every number has
the bounds beyond which it is meaningless. A ValueError names the parameter and the value.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

#: What a parameter holds. ``str`` parameters take one of their ``choices``.
KINDS: tuple[type, ...] = (bool, int, float, str)

_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
DECIMAL_TEXT = re.compile(_DECIMAL)
#: ``8/255``: how budgets in pixel units are usually written (docs/ATTACKS.md).
FRACTION_TEXT = re.compile(rf"\s*({_DECIMAL})\s*/\s*({_DECIMAL})\s*")


def number_from_text(text: str) -> float:
    """A float parameter typed by a person (a CLI flag, a form field): a plain decimal literal (``0.03``, ``1e-3``)
    or a fraction of two (``8/255``). A ValueError says what was expected; bounds are the declaration's to check."""
    fraction = FRACTION_TEXT.fullmatch(text)
    if fraction:
        den = float(fraction.group(2))
        if den == 0:
            raise ValueError(f"{text!r} divides by zero")
        return float(fraction.group(1)) / den
    if not DECIMAL_TEXT.fullmatch(text.strip()):
        raise ValueError(f"expected a decimal number such as 0.03 or a fraction such as 8/255, got {text!r}")
    return float(text)


@dataclass(frozen=True)
class Param:
    """One keyword-only hyper-parameter of a method.

    ``default`` is used when a request leaves the parameter out; it may be a function of the other resolved
    values (PGD's step size is ``eps / 4``), shown in docs as ``default_doc``. ``nullable`` parameters accept
    None (meaning: the function's own rule, e.g. a DIP preset's step count). ``field_name`` is the name in the
    API form and on the command line when it differs from the keyword (CW-L2's ``c_init`` is ``c``).
    ``public=False`` keeps a parameter out of the API and the CLI (it is still validated).
    ``api_low_open`` makes the API refuse the lower bound itself although the function accepts it (an eps of 0
    is a valid no-op for the function, a pointless request for the service); ``api_low`` raises the bound the API
    takes above the function's own (an eps that rounding to 8 bits undoes).
    """

    name: str
    kind: type
    description: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    odd: bool = False
    nullable: bool = False
    field_name: str | None = None
    public: bool = True
    api_low_open: bool | None = None
    api_low: float | None = None
    default_doc: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: kind must be one of {[k.__name__ for k in KINDS]}")
        if self.kind is str and not self.choices:
            raise ValueError(f"parameter {self.name!r}: a str parameter needs its choices")

    @property
    def field(self) -> str:
        """The name a client sends (API form field, ``--flag`` on the command line)."""
        return self.field_name or self.name

    def bounds_text(self) -> str:
        if self.choices:
            return ", ".join(self.choices)
        if self.low is None and self.high is None:
            return ""
        lo = "-inf" if self.low is None else self._num(self.low)
        hi = "inf" if self.high is None else self._num(self.high)
        return f"{'(' if self.low_open else '['}{lo}, {hi}{']' if self.high is not None else ')'}"

    def _num(self, v: float) -> str:
        return str(int(v)) if self.kind is int else f"{v:g}"

    def bound_phrase(self) -> str:
        """``in [0, 1]``, ``>= 1``, ``> 0`` or ``<= 8``: how messages state the range."""
        if self.low is not None and self.high is not None:
            return f"in {self.bounds_text()}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self._num(self.low)}"
        if self.high is not None:
            return f"<= {self._num(self.high)}"
        return ""

    def validate(self, value: Any, *, label: str | None = None) -> Any:
        """``value`` as a plain Python value of this parameter's kind, or a ValueError naming it and the value."""
        name = label or self.name
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"{name} is required, got None")
        if self.kind is bool:
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise ValueError(f"{name} must be a boolean (True or False), got {value!r}")
        if self.kind is str:
            if isinstance(value, str) and value in (self.choices or ()):
                return value
            raise ValueError(f"{name} must be one of {list(self.choices or ())}, got {value!r}")
        bound = self.bound_phrase()
        what = ("an integer" if self.kind is int else "a finite number") + (f" {bound}" if bound else "")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        if self.kind is int and not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        number = int(value) if self.kind is int else float(value)  # type: ignore[call-overload]
        low_ok = self.low is None or (number > self.low if self.low_open else number >= self.low)
        high_ok = self.high is None or number <= self.high
        if not (math.isfinite(number) and low_ok and high_ok):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        if self.odd and int(number) % 2 == 0:
            raise ValueError(f"{name} must be odd, got {value!r}")
        return number


#: Cross-parameter rules: ``(values, label) -> None``, raising ValueError; ``label(name)`` is how to name one.
CrossCheck = Callable[[Mapping[str, Any], Callable[[str], str]], None]


@dataclass(frozen=True)
class Method:
    """What attacks and purifiers declare alike: name, function, parameters, presets, description.

    ``presets`` are named bases of parameter values a request may start from (``preset=...``); without them the
    parameters' own defaults are the base.
    """

    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    description: str
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    default_preset: str | None = None
    cross_check: CrossCheck | None = None

    #: "attack" or "purifier", for messages.
    kind: ClassVar[str] = "method"

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.kind} {self.name!r} declares a parameter twice: {names}")
        missing = [n for n in names if not self.takes(n)]
        if missing:
            raise ValueError(f"{self.kind} {self.name!r} declares {missing}, which {self.fn.__name__} does not take")
        if self.presets:
            if self.default_preset not in self.presets:
                raise ValueError(f"{self.kind} {self.name!r}: default_preset must be one of {list(self.presets)}")
            for preset, values in self.presets.items():
                unknown = sorted(set(values) - set(names))
                if unknown:
                    raise ValueError(f"{self.kind} {self.name!r} preset {preset!r} sets undeclared {unknown}")

    @cached_property
    def keywords(self) -> frozenset[str]:
        """The keyword arguments the function takes."""
        return frozenset(inspect.signature(self.fn).parameters)

    def takes(self, keyword: str) -> bool:
        """Whether the function takes ``keyword`` (by name, or through ``**kwargs``)."""
        params = inspect.signature(self.fn).parameters.values()
        return keyword in self.keywords or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)

    def declares(self, name: str) -> bool:
        """Whether ``name`` is one of the declared parameters (what a request may set, if public)."""
        return name in self._declared

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.kind} {self.name!r} has no parameter {name!r}")

    @property
    def public_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.public)

    @property
    def request_params(self) -> tuple[Param, ...]:
        """What a request may set: ``preset`` where there are presets, then the public parameters."""
        if not self.presets:
            return self.public_params
        return (Param("preset", str, "the base values to start from", choices=tuple(self.presets)), *self.public_params)

    @property
    def request_names(self) -> list[str]:
        """The keyword names a request may set (``request_params``)."""
        return [p.name for p in self.request_params]

    def base(self, preset: str | None = None) -> dict[str, Any]:
        """The values a request starts from: a preset's (the default one unless named), else the defaults."""
        if not self.presets:
            if preset is not None:
                raise ValueError(f"{self.kind} {self.name} has no presets, got preset={preset!r}")
            return {}
        chosen = self.default_preset if preset is None else preset
        if chosen is None or chosen not in self.presets:
            raise ValueError(f"unknown {self.name} preset {preset!r}; choose one of {sorted(self.presets)}")
        return dict(self.presets[chosen])

    def default_of(self, p: Param) -> Any:
        """A parameter's value when a request leaves it out: the default preset's, else its declared default,
        else the function's own."""
        if self.presets and p.name == "preset":
            return self.default_preset
        if self.presets and self.default_preset is not None and p.name in self.presets[self.default_preset]:
            return self.presets[self.default_preset][p.name]
        if p.default is not None:
            return p.default
        own = inspect.signature(self.fn).parameters.get(p.name)
        return None if own is None or own.default is inspect.Parameter.empty else own.default

    def check(self, values: Mapping[str, Any], *, by_field: bool = False) -> dict[str, Any]:
        """Validate the values a function was called with (each declared one that is present), then the cross
        rules. Returns them as plain Python values. ``by_field`` names parameters as clients send them."""

        def label(name: str) -> str:
            return self.param(name).field if by_field else name

        out = {k: self.param(k).validate(v, label=label(k)) if k in self._declared else v for k, v in values.items()}
        if self.cross_check is not None:
            self.cross_check(out, label)
        return out

    @cached_property
    def _declared(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params)

    def resolve(self, given: Mapping[str, Any], *, by_field: bool = False) -> dict[str, Any]:
        """A request's values (keyword names; ``preset`` picks the base) to the full, validated keyword arguments.

        Left-out parameters take the base's value or their default (None-valued ones are dropped: the function's
        own default applies). Unknown names are a ValueError naming them and the allowed ones."""
        given = dict(given)
        base = self.base(given.pop("preset", None)) if self.presets else {}
        allowed = [p.name for p in self.public_params]
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameters {unknown} for {self.name}; allowed: {self.request_names}")
        values: dict[str, Any] = {}
        derived: list[Param] = []
        for p in self.params:
            if p.name in given:
                values[p.name] = given[p.name]
            elif p.name in base:
                values[p.name] = base[p.name]
            elif callable(p.default):
                derived.append(p)
            elif p.default is not None:
                values[p.name] = p.default
        for p in derived:
            values[p.name] = p.default(values)
        return self.check(values, by_field=by_field)


M = TypeVar("M", bound=Method)


class Registry(Generic[M]):
    """Methods by name, in registration order (register / get / names, as torchvision's ``models/_api.py``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, M] = {}

    def register(self, method: M) -> M:
        if method.name in self._entries:
            raise ValueError(f"{self.kind} {method.name!r} is already registered")
        self._entries[method.name] = method
        return method

    def unregister(self, name: str) -> None:
        """Remove a method (tests that register a toy one clean up with this)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> M:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {sorted(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[M]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def functions(self) -> dict[str, Callable[..., Any]]:
        """Name -> function, as a plain dict (a snapshot)."""
        return {name: m.fn for name, m in self._entries.items()}


class FunctionView(Mapping[str, Callable[..., Any]]):
    """Name -> function, live over a registry (read-only): ``ATTACKS[name](model, x, y, ...)``."""

    def __init__(self, registry: Registry[Any]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._registry:
            raise KeyError(name)
        return self._registry.get(name).fn

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())


def markdown_table(methods: list[Method]) -> str:
    """The docs' parameter table of ``methods``: one row per (method, parameter), from the declarations."""
    rows = ["| method | parameter | type | default | range | meaning |", "|---|---|---|---|---|---|"]
    for m in methods:
        if m.presets:
            choices = ", ".join(m.presets)
            rows.append(f"| `{m.name}` | `preset` | str | `{m.default_preset}` | {choices} | the base values |")
        for p in m.public_params:
            default = p.default_doc or m.default_of(p)
            shown = "preset's" if default is None and p.nullable else f"`{default}`"
            field_note = f" (keyword `{p.name}`)" if p.field_name else ""
            rows.append(
                f"| `{m.name}` | `{p.field}`{field_note} | {p.kind.__name__} | {shown} | {p.bounds_text()} "
                f"| {p.description} |"
            )
    return "\n".join(rows)


def eps_text(value: float) -> str:
    """A budget as RobustBench writes it: ``8/255`` for 0.0313... (whole 8-bit levels), else the smallest fraction that
    fits (denominator up to 1000: ``3/100``, ``1/510``), else levels with up to two decimals (``0.25/255``), else a
    plain number."""
    levels = value * 255
    if abs(levels - round(levels)) < 1e-7 and 0 < round(levels) < 255:
        return f"{round(levels)}/255"
    frac = Fraction(value).limit_denominator(1000)
    if abs(float(frac) - value) < 1e-9:
        return str(frac)
    if abs(levels - round(levels, 2)) < 1e-7 and round(levels, 2) > 0:
        return f"{round(levels, 2):g}/255"
    return f"{value:g}"
