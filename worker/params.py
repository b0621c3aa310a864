"""Typed method parameters from a request: defaults filled in, names and bounds checked."""

from __future__ import annotations

import math

from videoqa.worker.errors import InvalidInput
from videoqa.worker.types import MethodParam


def resolve_params(
    declared: tuple[MethodParam, ...], given: dict[str, float], owner: str, field: str
) -> dict[str, float]:
    """Every parameter ``owner`` declares, at its default unless ``given`` sets it; an unknown
    name, a value outside its bounds or a fraction for an integer is an ``InvalidInput`` on
    ``{field}.{name}``."""
    known = {p.name: p for p in declared}
    values = {p.name: p.default for p in declared}
    for key, value in given.items():
        where = f"{field}.{key}"
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidInput(f"{owner} has no parameter {key!r} (parameters: {allowed})", field=where)
        param = known[key]
        if math.isnan(value) or not (param.min <= value <= param.max):
            raise InvalidInput(
                f"parameter {key!r} of {owner} must be in [{param.min}, {param.max}], got {value}", field=where
            )
        if param.integer and value != int(value):
            raise InvalidInput(f"parameter {key!r} of {owner} must be an integer", field=where)
        values[key] = value
    return values
