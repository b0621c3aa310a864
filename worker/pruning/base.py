"""The pruning-method interface the engine calls after prefill.

A method looks at a session's freshly prefilled cache and its token layout and shrinks the cache
in place (every layer to the same length). The compression engine (scorers, top-k, Recycling
Bin) builds on this interface; ``full`` keeps everything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.generate import ConversationState
from videoqa.worker.types import MethodParam


@dataclass
class PruneResult:
    """Visual tokens left in the cache, and recycled entries that summarise evicted ones."""

    visual_kept: int
    recycled: int = 0


class PruningMethod(ABC):
    """Base class: ``name`` is the stable wire name, ``params`` its tunable parameters."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[MethodParam, ...]] = ()

    def __init__(self, budget: float, **params: float):
        self.budget = budget
        self.values = params

    @abstractmethod
    def apply(self, state: ConversationState, layout: TokenLayout) -> PruneResult:
        """Shrink ``state.cache`` in place; ``layout`` locates the visual tokens."""
