"""``vidcom2``: per-frame budgets from each frame's uniqueness, tokens chosen within frames by
distinctiveness (after VidCom2, "Video Compression Commander", as vLLM's
``--video-retention-ratio`` runs it).

1. **Frame budgets.** A token's uniqueness is ``−cos(token, video mean)``; a span's is the mean
   over its tokens. A span's budget is ``retention · n_i · (1 + p_i − mean(p))`` with ``p`` the
   softmax of the spans' uniqueness at ``temperature``, capped at its size: spans that differ
   from the rest of the video keep more, repeated ones less, and the total stays at retention.
2. **Tokens within a span.** A token's distinctiveness is ``−(cos(token, span mean) +
   cos(token, video mean))``: what neither its own frame nor the video as a whole already shows.
   Each span keeps its budget of the most distinctive (at least one); what rounding and the caps
   leave over goes to the most distinctive tokens anywhere.
"""

from __future__ import annotations

import torch

from videoqa.worker.reduction.base import ReductionMethod, cosine, select
from videoqa.worker.reduction.registry import register
from videoqa.worker.types import MethodParam


def frame_budgets(spans: list[torch.Tensor], retention: float, temperature: float) -> list[int]:
    """Tokens each span keeps (≥ 1, ≤ its size) before the leftover is spread."""
    video = torch.cat([s.float() for s in spans]).mean(0, keepdim=True)
    uniqueness = torch.stack([-cosine(s, video).mean() for s in spans])
    share = torch.softmax(uniqueness / temperature, dim=0)
    scale = 1 + share - share.mean()
    return [max(1, min(s.shape[0], int(retention * s.shape[0] * float(k)))) for s, k in zip(spans, scale, strict=True)]


def distinctiveness(spans: list[torch.Tensor]) -> list[torch.Tensor]:
    """``−(cos(token, span mean) + cos(token, video mean))``, ``[n_i]`` per span."""
    video = torch.cat([s.float() for s in spans]).mean(0, keepdim=True)
    return [-(cosine(s, s.float().mean(0, keepdim=True)) + cosine(s, video)) for s in spans]


@register
class VidCom2(ReductionMethod):
    name = "vidcom2"
    description = (
        "Gives each frame span a budget by its uniqueness in the video, and keeps its most "
        "distinctive tokens, before the language model."
    )
    params = (
        MethodParam("temperature", "Softmax temperature of the frame budgets (lower: more uneven)", 0.1, 0.001, 10.0),
    )

    def keep(self, spans: list[torch.Tensor]) -> list[torch.Tensor]:
        scores = distinctiveness(spans)
        budgets = frame_budgets(spans, self.retention, float(self.values.get("temperature", 0.1)))
        total = self.target(sum(s.shape[0] for s in spans))
        masks = []
        for score, budget in zip(scores, budgets, strict=True):
            mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
            mask[torch.sort(score, descending=True, stable=True).indices[:budget]] = True
            masks.append(mask)
        kept = sum(int(m.sum()) for m in masks)
        if kept == total:
            return masks
        # The per-span minimum and rounding miss the total: over it, keep each span's best and the
        # most distinctive of the rest of the kept; under it, add the most distinctive anywhere.
        fill = float("-inf") if kept > total else float("inf")
        pinned = [s.masked_fill(~m if kept > total else m, fill) for s, m in zip(scores, masks, strict=True)]
        return select(pinned, total)
