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


def recycle(
    keys: torch.Tensor,
    values: torch.Tensor,
    evicted: torch.Tensor,
    frame_of: torch.Tensor,
    bins: list[int],
    weights: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Recycled entries for every KV head.

    Args:
        keys, values: visual entries [H_kv, n_visual, D].
        evicted: [H_kv, n_visual] bool, the tokens that leave the cache.
        frame_of: [n_visual] frame span of each visual token.
        bins: recycled entries wanted per head.
        weights: [H_kv, n_visual] merge weights (scores, or ones).

    Returns, per head, ``(keys [b, D], values [b, D], counts [b])`` in frame order, where
    ``counts`` is how many evicted tokens each entry folds.
    """
    out = []
    num_frames = int(frame_of.max()) + 1
    device = keys.device
    for h, wanted in enumerate(bins):
        ev = evicted[h]
        if wanted <= 0 or not bool(ev.any()):
            empty = keys.new_zeros(0, keys.shape[-1])
            out.append((empty, values.new_zeros(0, values.shape[-1]), torch.zeros(0, device=device)))
            continue
        groups, group_of = _frame_groups(frame_of, ev, num_frames, wanted)
        per_frame = torch.bincount(group_of[ev], minlength=groups)
        frame_bins = allocate(per_frame, wanted)
        # Rank of each evicted token within its group's evicted tokens, then its chunk and entry id.
        idx = ev.nonzero().flatten()
        frames = group_of[idx]
        starts = torch.cumsum(per_frame, 0) - per_frame
        rank = torch.arange(idx.numel()) - starts[frames]
        chunk = (rank * frame_bins[frames]) // per_frame[frames].clamp(min=1)
        offsets = torch.cumsum(frame_bins, 0) - frame_bins
        entry = (offsets[frames] + chunk).to(device)
        n_entries = int(frame_bins.sum())
        w = weights[h, idx].clamp(min=0).to(device=device, dtype=torch.float32)
        total_w = torch.zeros(n_entries, device=device).index_add_(0, entry, w)
        uniform = total_w <= 0  # all-zero scores: fall back to a plain mean
        w = torch.where(uniform[entry], torch.ones_like(w), w)
        total_w = torch.zeros(n_entries, device=device).index_add_(0, entry, w)
        pi = (w / total_w[entry]).to(keys.dtype)[:, None]
        on_device = idx.to(device)
        bin_k = _weighted_sum(keys[h, on_device], entry, pi, n_entries)
        bin_v = _weighted_sum(values[h, on_device], entry, pi, n_entries)
        counts = torch.zeros(n_entries, device=device).index_add_(0, entry, torch.ones_like(w))
        out.append((bin_k, bin_v, counts))
    return out


def _weighted_sum(rows: torch.Tensor, entry: torch.Tensor, pi: torch.Tensor, n_entries: int) -> torch.Tensor:
    """Σ π_j·rows_j per entry: rows [n, D], entry [n] ids, π [n, 1] → [n_entries, D]."""
    out = torch.zeros(n_entries, rows.shape[-1], dtype=rows.dtype, device=rows.device)
    return out.index_add_(0, entry, pi * rows)
