"""Registry of reduction methods by wire name, and validation of a requested reduction."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from videoqa.worker.errors import InvalidInput
from videoqa.worker.types import MethodDescription, ReductionSpec

if TYPE_CHECKING:
    from videoqa.worker.reduction.base import ReductionMethod

REDUCTIONS: dict[str, type[ReductionMethod]] = {}


def register(cls: type[ReductionMethod]) -> type[ReductionMethod]:
    if cls.name in REDUCTIONS:
        raise ValueError(f"reduction method {cls.name!r} registered twice")
    REDUCTIONS[cls.name] = cls
    return cls


def build_reduction(spec: ReductionSpec) -> ReductionMethod | None:
    """The reduction a request names (``None``: none); every problem is an ``InvalidInput``."""
    _load_builtin_methods()
    retention = 1.0 if spec.retention == 0 else spec.retention
    if not (0 < retention <= 1) or math.isnan(retention):
        raise InvalidInput(f"retention must be in (0, 1], got {spec.retention}", field="pruning.reduction.retention")
    if not spec.active:
        if spec.params or retention != 1.0:
            raise InvalidInput(
                "a reduction's retention or parameters need a reduction method", field="pruning.reduction.method"
            )
        return None
    if spec.method not in REDUCTIONS:
        raise InvalidInput(
            f"unknown reduction method {spec.method!r}; available: none, {', '.join(sorted(REDUCTIONS))}",
            field="pruning.reduction.method",
        )
    cls = REDUCTIONS[spec.method]
    known = {p.name: p for p in cls.params}
    values = {p.name: p.default for p in cls.params}
    for key, value in spec.params.items():
        where = f"pruning.reduction.params.{key}"
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise InvalidInput(
                f"reduction {spec.method!r} has no parameter {key!r} (parameters: {allowed})", field=where
            )
        param = known[key]
        if math.isnan(value) or not (param.min <= value <= param.max):
            raise InvalidInput(
                f"parameter {key!r} of {spec.method!r} must be in [{param.min}, {param.max}], got {value}", field=where
            )
        if param.integer and value != int(value):
            raise InvalidInput(f"parameter {key!r} of {spec.method!r} must be an integer", field=where)
        values[key] = value
    return cls(retention, values)


def describe_reductions() -> list[MethodDescription]:
    _load_builtin_methods()
    methods = sorted(REDUCTIONS.values(), key=lambda c: c.name)
    return [MethodDescription(cls.name, cls.description, tuple(cls.params)) for cls in methods]


def _load_builtin_methods() -> None:
    from videoqa.worker.reduction import methods  # noqa: F401  (registers every built-in method)
