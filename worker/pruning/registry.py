"""Registry of pruning methods by wire name, and validation of a requested pruning spec."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from videoqa.worker.errors import InvalidInput
from videoqa.worker.params import resolve_params
from videoqa.worker.types import MethodDescription, PruningSpec

if TYPE_CHECKING:
    from videoqa.worker.pruning.base import PruningMethod

METHODS: dict[str, type[PruningMethod]] = {}
DEFAULT_METHOD = "full"
#: Upper bound on ``PruningSpec.max_visual_tokens``.
MAX_VISUAL_TOKENS = 1 << 24


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    if cls.name in METHODS:
        raise ValueError(f"pruning method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def build_method(spec: PruningSpec) -> PruningMethod:
    """Instantiate the method a request names; every problem is an ``InvalidInput``."""
    _load_builtin_methods()
    name = spec.method or DEFAULT_METHOD
    if name not in METHODS:
        raise InvalidInput(
            f"unknown pruning method {name!r}; available: {', '.join(sorted(METHODS))}", field="pruning.method"
        )
    cls = METHODS[name]
    budget = 1.0 if spec.budget == 0 else spec.budget
    if not (0 < budget <= 1) or math.isnan(budget):
        raise InvalidInput(f"budget must be in (0, 1], got {spec.budget}", field="pruning.budget")
    if name == "full" and budget != 1.0:
        raise InvalidInput("method 'full' keeps every token; its budget must be 1", field="pruning.budget")
    cap = spec.max_visual_tokens
    if cap < 0 or cap > MAX_VISUAL_TOKENS:
        raise InvalidInput(
            f"max_visual_tokens must be in [0, {MAX_VISUAL_TOKENS}], got {cap}", field="pruning.max_visual_tokens"
        )
    if cap and (name == "full" or not cls.progressive):
        progressive = ", ".join(sorted(n for n, c in METHODS.items() if c.progressive and n != "full"))
        raise InvalidInput(
            f"method {name!r} cannot hold a cap on visual entries (it compresses once, after the whole prefill); "
            f"methods that compress progressively: {progressive}",
            field="pruning.max_visual_tokens",
        )
    values = resolve_params(tuple(cls.params), spec.params, f"method {name!r}", "pruning.params")
    return cls(budget, cap, **values)


def describe_methods() -> list[MethodDescription]:
    _load_builtin_methods()
    return [
        MethodDescription(cls.name, cls.description, tuple(cls.params), cls.name == DEFAULT_METHOD, cls.progressive)
        for cls in sorted(METHODS.values(), key=lambda c: c.name)
    ]


def _load_builtin_methods() -> None:
    from videoqa.worker.pruning import methods  # noqa: F401  (registers every built-in method)
