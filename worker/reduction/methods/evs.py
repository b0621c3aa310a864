"""``evs``: drop tokens that repeat the previous frame span (after EVS, Efficient Video Sampling,
arXiv 2510.14624, as vLLM and SGLang run it).

Each token is compared with the token at the same place in the previous span (cosine similarity
of their features); its score is the dissimilarity ``1 − similarity``. The first span is kept
whole (it has nothing to repeat). Ratio form (``threshold`` 0): the ``retention`` share of all
tokens with the highest dissimilarity. Threshold form: every token whose similarity to its
predecessor is below ``threshold``, at most the ``retention`` share (1: no cap). A token without
a counterpart in the previous span (LLaVA-OneVision's newline after the last frame, or spans of
different sizes) counts as new.
"""

from __future__ import annotations

import torch

from videoqa.worker.reduction.base import ReductionMethod, cosine, select
from videoqa.worker.reduction.registry import register
from videoqa.worker.types import MethodParam


def dissimilarity(spans: list[torch.Tensor]) -> list[torch.Tensor]:
    """``1 − cos`` of each token with the same place in the previous span, ``[n_i]`` per span
    (2, the most, for the first span and for tokens without a counterpart)."""
    out = []
    for i, tokens in enumerate(spans):
        score = torch.full((tokens.shape[0],), 2.0, device=tokens.device)
        if i > 0:
            shared = min(tokens.shape[0], spans[i - 1].shape[0])
            score[:shared] = 1.0 - cosine(tokens[:shared], spans[i - 1][:shared])
        out.append(score)
    return out


@register
class EVS(ReductionMethod):
    name = "evs"
    description = (
        "Drops visual tokens nearly identical to the same place in the previous frame span "
        "(the first span kept whole), before the language model."
    )
    params = (
        MethodParam(
            "threshold",
            "Keep tokens whose cosine similarity to their predecessor is below this (0: keep the retention share)",
            0.0,
            0.0,
            1.0,
        ),
    )

    def keep(self, spans: list[torch.Tensor]) -> list[torch.Tensor]:
        scores = dissimilarity(spans)
        total = sum(s.numel() for s in scores)
        threshold = float(self.values.get("threshold", 0.0))
        if threshold <= 0:
            return select(scores, self.target(total), whole=(0,))
        below = sum(int((s > 1.0 - threshold).sum()) for s in scores[1:]) + scores[0].numel()
        return select(scores, min(below, self.target(total)), whole=(0,))
