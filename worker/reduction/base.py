"""The interface of a reduction method: which visual tokens go into the language model at all.

KV pruning (``pruning/``) runs the whole video through the language model and then shrinks the
cache; a reduction drops visual tokens *before* it, right after the vision tower and merger, so
the prefill itself gets cheaper. A method sees the features of a video's visual tokens, one
tensor per frame span (``[n_i, hidden]``: the language model's input embeddings of the span's
tokens, in the span's own order: the raster order of the merged grid for the Qwen families, one
frame's pooled grid for LLaVA-OneVision), and returns which to keep, one bool mask ``[n_i]`` per
span.

Conventions every method keeps (:func:`select`):

- ``retention`` is the fraction of the video's visual tokens kept: ``max(per-span minimum,
  round(retention · n))``.
- Every frame span keeps at least one token, its highest-scored: a frame's time in a Qwen3-VL
  prompt, or a LLaVA-OneVision frame, never stands without a token of its frame (and every
  downstream layout keeps one span per frame).
- Tokens are never moved or merged: the kept ones keep their features and their original
  positions (``reduction/prompt.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from videoqa.worker.types import MethodParam


class ReductionMethod(ABC):
    """One reduction, configured: ``retention`` in (0, 1] and the method's own parameters."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[tuple[MethodParam, ...]] = ()

    def __init__(self, retention: float, values: dict[str, float]):
        self.retention = retention
        self.values = values

    @abstractmethod
    def keep(self, spans: list[torch.Tensor]) -> list[torch.Tensor]:
        """Bool masks ``[n_i]``, one per span of ``spans`` (features ``[n_i, hidden]``)."""

    def target(self, total: int) -> int:
        """How many of ``total`` visual tokens to keep at this retention."""
        return max(1, round(self.retention * total))


def select(scores: list[torch.Tensor], count: int, whole: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """Keep ``count`` tokens over all spans by score (higher kept first), with the spans listed
    in ``whole`` kept entirely and every other span's best token kept whatever its score; those
    count toward ``count`` (which is raised to them if it is smaller). ``scores``: ``[n_i]`` per
    span; returns bool masks ``[n_i]``. Ties go to the earlier token."""
    masks = [torch.zeros(s.numel(), dtype=torch.bool, device=s.device) for s in scores]
    for i, s in enumerate(scores):
        if s.numel() == 0:
            continue
        if i in whole:
            masks[i][:] = True
        else:
            masks[i][int(torch.argmax(s))] = True
    forced = sum(int(m.sum()) for m in masks)
    rest = count - forced
    if rest > 0:
        flat = torch.cat([s.float() for s in scores])
        taken = torch.cat(masks)
        flat = flat.masked_fill(taken, float("-inf"))
        order = torch.sort(flat, descending=True, stable=True).indices[:rest]
        taken[order] = True
        masks = list(torch.split(taken, [s.numel() for s in scores]))
    return masks


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of ``a`` [n, d] with those of ``b`` ([n, d] or [1, d]), in float32."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
