"""The Recycling Bin: evicted visual tokens folded into a few summary entries per frame span.

For each frame span m and KV head, the evicted set E_m is split into contiguous chunks (token
order, i.e. raster order within the frame) and each chunk becomes one entry:

    π_j = w_j / Σ_{i∈chunk} w_i,    k̃ = Σ π_j K_j,    ṽ = Σ π_j V_j

with ``w`` the method's scores (or uniform). Keys are merged as cached, after RoPE (as LOOK-M
and kvpress' MergingPress do). Every head ends with the same number of entries: spans whose
tokens were all kept give their entries to the spans with the most evicted tokens.
A reconstruction of "Myopia Rectification" (CVPR 2026 Findings), whose exact formula is not public.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def allocate(evicted_per_frame: torch.Tensor, total: int) -> torch.Tensor:
    """Recycled entries per frame span [M] for one head, summing to ``total``.

    Each span with evicted tokens gets an equal share first (never more entries than evicted
    tokens); what is left goes to the spans with the most evicted tokens per entry."""
    counts = evicted_per_frame.long()
    alive = counts > 0
    bins = torch.zeros_like(counts)
    if total <= 0 or not bool(alive.any()):
        return bins
    base = total // int(alive.sum())
    bins[alive] = torch.minimum(counts[alive], torch.full_like(counts[alive], base))
    left = total - int(bins.sum())
    while left > 0:
        room = torch.where(bins < counts, counts.float() / (bins + 1).float(), torch.tensor(-1.0))
        best = int(torch.argmax(room))
        if room[best] < 0:
            break
        bins[best] += 1
        left -= 1
    return bins


def _frame_groups(frame_of: torch.Tensor, evicted: torch.Tensor, num_frames: int, wanted: int):
    """Frame spans, or runs of adjacent spans when fewer entries are wanted than spans have
    evicted tokens (then neighbouring frames share an entry). Returns (count, group per token)."""
    alive = torch.bincount(frame_of[evicted], minlength=num_frames).nonzero().flatten()
    if wanted >= alive.numel():
        return num_frames, frame_of
    remap = torch.zeros(num_frames, dtype=torch.long)
    remap[alive] = (torch.arange(alive.numel()) * wanted) // alive.numel()
    # Spans with nothing evicted join the group of the span before them (irrelevant: no tokens).
    for m in range(1, num_frames):
        if m not in set(alive.tolist()):
            remap[m] = remap[m - 1]
    return wanted, remap[frame_of]


@dataclass
class Folded:
    """One KV head's recycled entries, in frame order: ``keys``/``values`` [b, D]; ``counts`` [b]:
    tokens each folds; ``weights`` [b]: the merge weight each carries into a later fold (the sum
    of its members'); ``order`` [b]: the count-weighted mean token index; ``frames`` [b]."""

    keys: torch.Tensor
    values: torch.Tensor
    counts: torch.Tensor
    weights: torch.Tensor
    order: torch.Tensor
    frames: torch.Tensor


def fold(
    keys: torch.Tensor,
    values: torch.Tensor,
    members: torch.Tensor,
    frames: torch.Tensor,
    order: torch.Tensor,
    weights: torch.Tensor,
    counts: torch.Tensor,
    bins: list[int],
) -> list[Folded]:
    """Recycled entries for every KV head, from the entries each head folds.

    Args:
        keys, values: the layer's visual entries [H_kv, n, D].
        members: [H_kv, n] bool, the entries that fold (evicted tokens, and earlier recycled
            entries being folded again).
        frames: [H_kv, n] frame span of each entry; ``order`` [H_kv, n] its token index (a
            recycled entry: the mean of its tokens').
        weights: [H_kv, n] merge weights (scores or ones; an earlier recycled entry: its weight
            sum); ``counts`` [H_kv, n]: tokens each entry stands for (1 for a token).
        bins: recycled entries wanted per head.

    Each head's members are grouped by frame span (runs of adjacent spans when fewer entries are
    wanted than spans), ordered by token index, split into contiguous chunks, and each chunk
    becomes ``Σ w·x / Σ w``: a weighted mean over every token it covers, since an earlier recycled
    entry enters with its own weight sum.
    """
    out = []
    device = keys.device
    for h, wanted in enumerate(bins):
        ev = members[h]
        if wanted <= 0 or not bool(ev.any()):
            empty = torch.zeros(0, device=device)
            out.append(
                Folded(
                    keys.new_zeros(0, keys.shape[-1]),
                    values.new_zeros(0, values.shape[-1]),
                    empty,
                    empty.clone(),
                    empty.clone(),
                    torch.zeros(0, dtype=torch.long),
                )
            )
            continue
        idx = ev.nonzero().flatten()
        idx = idx[torch.argsort(order[h, idx], stable=True)]  # token order (a no-op for one video's tokens)
        frame_of = frames[h].clamp(min=0)  # (text entries, -1, are never members)
        num_frames = int(frame_of.max()) + 1
        idx = idx[torch.argsort(frame_of[idx], stable=True)]  # grouped by frame, token order within
        groups, group_of = _frame_groups(frame_of, ev, num_frames, wanted)
        per_frame = torch.bincount(group_of[idx], minlength=groups)
        frame_bins = allocate(per_frame, wanted)
        # Rank of each member within its group, then its chunk and entry id.
        group = group_of[idx]
        starts = torch.cumsum(per_frame, 0) - per_frame
        rank = torch.arange(idx.numel()) - starts[group]
        chunk = (rank * frame_bins[group]) // per_frame[group].clamp(min=1)
        offsets = torch.cumsum(frame_bins, 0) - frame_bins
        entry = (offsets[group] + chunk).to(device)
        n_entries = int(frame_bins.sum())
        w = weights[h, idx].clamp(min=0).to(device=device, dtype=torch.float32)
        c = counts[h, idx].to(device=device, dtype=torch.float32)
        total_w = torch.zeros(n_entries, device=device).index_add_(0, entry, w)
        uniform = total_w <= 0  # all-zero scores: fall back to a mean over the tokens
        w = torch.where(uniform[entry], c, w)
        total_w = torch.zeros(n_entries, device=device).index_add_(0, entry, w)
        pi = (w / total_w[entry]).to(keys.dtype)[:, None]
        on_device = idx.to(device)
        folded_counts = torch.zeros(n_entries, device=device).index_add_(0, entry, c)
        positions = order[h, idx].to(device=device, dtype=torch.float32) * c
        mean_order = torch.zeros(n_entries, device=device).index_add_(0, entry, positions) / folded_counts
        entry_frame = torch.zeros(n_entries, dtype=torch.long).scatter_reduce_(
            0, entry.cpu(), frame_of[idx].long(), "amin", include_self=False
        )
        out.append(
            Folded(
                _weighted_sum(keys[h, on_device], entry, pi, n_entries),
                _weighted_sum(values[h, on_device], entry, pi, n_entries),
                folded_counts,
                total_w,
                mean_order,
                entry_frame,
            )
        )
    return out


def recycle(
    keys: torch.Tensor,
    values: torch.Tensor,
    evicted: torch.Tensor,
    frame_of: torch.Tensor,
    bins: list[int],
    weights: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`fold` of one video's evicted tokens (``evicted`` [H_kv, n], ``frame_of`` [n] in token
    order): per head ``(keys [b, D], values [b, D], counts [b])``."""
    heads, n = evicted.shape
    frames = frame_of[None].expand(heads, n)
    order = torch.arange(n, dtype=torch.float32)[None].expand(heads, n)
    folded = fold(keys, values, evicted, frames, order, weights, torch.ones(heads, n), bins)
    return [(f.keys, f.values, f.counts) for f in folded]


def _weighted_sum(rows: torch.Tensor, entry: torch.Tensor, pi: torch.Tensor, n_entries: int) -> torch.Tensor:
    """Σ π_j·rows_j per entry: rows [n, D], entry [n] ids, π [n, 1] → [n_entries, D]."""
    out = torch.zeros(n_entries, rows.shape[-1], dtype=rows.dtype, device=rows.device)
    return out.index_add_(0, entry, pi * rows)
