"""Registry of reduction methods by wire name, and validation of a requested reduction."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from videoqa.worker.errors import InvalidInput
from videoqa.worker.params import resolve_params
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
    values = resolve_params(cls.params, spec.params, f"reduction {spec.method!r}", "pruning.reduction.params")
    return cls(retention, values)


def describe_reductions() -> list[MethodDescription]:
    _load_builtin_methods()
    methods = sorted(REDUCTIONS.values(), key=lambda c: c.name)
    return [MethodDescription(cls.name, cls.description, tuple(cls.params)) for cls in methods]


def _load_builtin_methods() -> None:
    from videoqa.worker.reduction import methods  # noqa: F401  (registers every built-in method)
