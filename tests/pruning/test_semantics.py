"""Method semantics: each pruning method's scoring and selection on synthetic attention statistics.

The other pruning tests run methods on a tiny model and check what every method must do (cache
lengths, keep-all bit for bit, positions); they cannot tell whether a method ranks the *right*
tokens. Here every method gets hand-made statistics (:class:`GroupStats` in a :class:`Recording`)
over a small prompt whose right answer is obvious by construction, and the test asserts the exact
kept set, per layer and KV head, that docs/pruning.md's definition of the method implies. Each
test's docstring names the wrong variants it catches (each was checked by breaking the method).

The prompt: 4 text tokens, 3 frame spans of 4 visual tokens (prompt positions 4..15), 3 text
tokens (the question); 4 query heads in 2 GQA groups of 2 (2 KV heads); 4 layers. Visual tokens
are named by their index 0..11 among the visual tokens. No model is loaded: a method runs on a
``DynamicCache`` whose key at position ``p`` starts with ``p``, so what survives can be read back.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from videoqa.worker.model.attention import GroupStats, Recording
from videoqa.worker.model.families import TokenLayout
from videoqa.worker.model.state import RECYCLED, TEXT, TOKEN, ConversationState
from videoqa.worker.pruning.base import LayerView, PruneContext, RowSets
from videoqa.worker.pruning.methods.look_m import pivot_merge
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.types import PruningSpec

TEXT_BEFORE, FRAMES, PER_FRAME, TEXT_AFTER = 4, 3, 4, 3
N = FRAMES * PER_FRAME  # visual tokens
V0 = TEXT_BEFORE  # prompt position of visual token 0
L = TEXT_BEFORE + N + TEXT_AFTER  # prompt length
HEADS, KV_HEADS, LAYERS, DIM = 4, 2, 4, 4
LAYOUT = TokenLayout(L, V0, V0 + N, [(V0 + m * PER_FRAME, V0 + (m + 1) * PER_FRAME) for m in range(FRAMES)], 1)
TEXT_POSITIONS = set(range(V0)) | set(range(V0 + N, L))
ROWS = RowSets(LAYOUT, torch.arange(V0 + N, L), True, LAYERS)


# --- synthetic statistics --------------------------------------------------------------------


def tensor(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32)


def split_groups(per_kv: torch.Tensor) -> torch.Tensor:
    """[KV_HEADS, N] → [HEADS, N] whose mean over each GQA group is ``per_kv`` while no single
    query head ranks like it (the group's first head holds the even tokens, the second the odd)."""
    even = (torch.arange(N) % 2 == 0).float()
    rows = []
    for kv in per_kv:
        rows += [2 * kv * even, 2 * kv * (1 - even)]
    return torch.stack(rows)


def all_heads(per_token) -> torch.Tensor:
    """[N] → [HEADS, N] whose mean over all query heads is ``per_token`` but no head's alone
    (head h holds the tokens j with j % HEADS == h)."""
    per_token = tensor(per_token)
    return torch.stack([HEADS * per_token * (torch.arange(N) % HEADS == h).float() for h in range(HEADS)])


def same_heads(per_token) -> torch.Tensor:
    return tensor(per_token)[None].expand(HEADS, N).clone()


def columns(visual: torch.Tensor, text=0.0) -> torch.Tensor:
    """[HEADS, N] visual columns → [HEADS, L] over the whole prompt (``text`` in the text columns)."""
    full = torch.as_tensor(text, dtype=torch.float32).expand(HEADS, L).clone()
    full[:, V0 : V0 + N] = visual
    return full


def stats(mean: torch.Tensor, rows: int = 1, visible=None, colsq=None, colplogp=None) -> GroupStats:
    """A group of ``rows`` query rows whose mean attention is ``mean`` [HEADS, L] (``visible``:
    how many of them see each key; every row sees every key unless given)."""
    visible = torch.full((L,), rows, dtype=torch.long) if visible is None else torch.as_tensor(visible)
    return GroupStats(mean * rows, visible, rows, colsq, colplogp)


def record(**groups) -> Recording:
    """A recording with the same statistics in every layer (a value) or per layer (a dict)."""
    out: dict[int, dict[str, GroupStats]] = {layer: {} for layer in range(LAYERS)}
    for name, value in groups.items():
        for layer in range(LAYERS):
            if isinstance(value, dict):
                if layer in value:
                    out[layer][name] = value[layer]
            else:
                out[layer][name] = value
    return Recording([], stats={layer: g for layer, g in out.items() if g})


def context(prefill: Recording | None = None, window: Recording | None = None, aware: bool = True, **kw):
    return PruneContext(
        layout=LAYOUT,
        prefill=prefill or Recording([]),
        window=window or Recording([]),
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        question_aware=aware,
        **kw,
    )


def method(name: str, budget: float, **params):
    return build_method(PruningSpec(name, {k: float(v) for k, v in params.items()}, budget))


# --- running a method on a synthetic cache ---------------------------------------------------


def synthetic_cache(seed: int = 0) -> tuple[DynamicCache, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A cache whose key at position p is [p, noise…] in every layer and head; also the originals."""
    generator = torch.Generator().manual_seed(seed)
    cache, originals = DynamicCache(), []
    for layer in range(LAYERS):
        keys = torch.randn(1, KV_HEADS, L, DIM, generator=generator)
        keys[..., 0] = torch.arange(L, dtype=torch.float32)
        values = torch.randn(1, KV_HEADS, L, DIM, generator=generator)
        originals.append((keys.clone(), values.clone()))
        cache.update(keys, values, layer)
    return cache, originals


def prune(pruning, ctx: PruneContext):
    """Run ``pruning.apply`` on a synthetic cache: (state, result, original keys/values per layer)."""
    cache, originals = synthetic_cache()
    state = ConversationState(cache, L, 0)
    result = pruning.apply(state, ctx)
    return state, result, originals


def kept(state: ConversationState) -> list[list[set[int]]]:
    """Per layer and KV head, the visual tokens (0..N-1) left in the cache as exact tokens.

    Also checks what every method must do: every text token survives, and an entry the slot map
    calls a token is the original entry of that token."""
    out = []
    for layer, cache_layer in enumerate(state.cache.layers):
        positions = cache_layer.keys[0, :, :, 0]  # [H_kv, length]
        per_head = []
        for h in range(KV_HEADS):
            if state.slots is None:  # a method without a slot map (hae): entries are original tokens
                tokens = {int(p) for p in positions[h].tolist()}
                assert tokens >= TEXT_POSITIONS, "every text token is kept"
                per_head.append({p - V0 for p in tokens if V0 <= p < V0 + N})
                continue
            slots = state.slots.layers[layer]
            kind = slots.kind[h]
            assert {int(p) for p in positions[h, kind == TEXT].tolist()} == TEXT_POSITIONS
            token_order = slots.order[h, kind == TOKEN]
            assert torch.equal(positions[h, kind == TOKEN], token_order), "a token entry is that token's key"
            per_head.append({int(p) - V0 for p in token_order.tolist()})
        out.append(per_head)
    return out


def recycled(state: ConversationState, layer: int) -> list[int]:
    """Recycled entries per KV head of ``layer``."""
    return [int(n) for n in (state.slots.layers[layer].kind == RECYCLED).sum(dim=1)]


def top(scores, k: int) -> set[int]:
    return set(torch.argsort(tensor(scores), descending=True, stable=True)[:k].tolist())


# --- what every method asks for and how it selects -------------------------------------------


def generic_context() -> PruneContext:
    """Random positive statistics under every group name any method reads."""
    g = torch.Generator().manual_seed(1)

    def some(**extra) -> GroupStats:
        mean = torch.rand(HEADS, L, generator=g) + 0.01
        return stats(mean, 4, **extra)

    moments = stats(torch.rand(HEADS, L, generator=g) + 0.01, 4, colsq=torch.rand(HEADS, L, generator=g))
    spread = stats(torch.rand(HEADS, L, generator=g) + 0.5, 4, colplogp=-torch.rand(HEADS, L, generator=g))
    prefill = record(all=moments, self=some(), visual=some(), spread=spread)
    window = record(window=some(), cross=some(), last=some())
    return context(prefill, window)


SHARED = {"random": {}, "streaming_llm": {}, "fastv": {}, "das": {}}
PER_KV_HEAD = {
    "h2o": {},
    "snapkv": {},
    "pyramidkv": {},
    "look_m": {},
    "csp": {},
    "madakv": {},
    "retentive_kv": {},
    "das": {"per_head": 1},
}


@pytest.mark.parametrize(
    ("name", "params", "rows"),
    [(n, p, 1) for n, p in SHARED.items()] + [(n, p, KV_HEADS) for n, p in PER_KV_HEAD.items()],
    ids=[f"{n}-shared" for n in SHARED] + [f"{n}{'-per_head' if p else ''}" for n, p in PER_KV_HEAD.items()],
)
def test_selection_is_shared_or_per_kv_head_as_documented(name, params, rows):
    """docs/pruning.md's "selection" column: one kept set for every KV head ([1, n] scores) or a
    kept set per KV head ([H_kv, n]). Catches a per-head method that averages all heads into one
    ranking (or a shared one that scores per head)."""
    ctx = generic_context()
    pruning = method(name, 0.5, **params)
    for layer in range(LAYERS):
        assert pruning.score(layer, ctx).shape == (rows, N)


def test_each_method_asks_for_the_query_rows_its_definition_uses():
    """Which attention a method is given: H2O and LOOK-M all prompt rows; SnapKV, PyramidKV,
    MadaKV and RetentiveKV the observation window; FastV the last prompt token at layer K-1 only;
    CSP the window (cross) and the visual rows in the last ``window_ratio`` of the prefill (self),
    both n-softmax; DAS the window and strided visual rows; HAE every row at one layer, with
    moments; RetentiveKV strided visual rows with entropy. Catches an H2O that does not accumulate
    over every query row, a SnapKV without its window, a FastV that ignores ``layer``, a CSP with
    plain softmax or without its self rows."""
    window = ROWS.window
    every = torch.arange(L)

    def groups(name, **params):
        pruning = method(name, 0.5, **params)
        return {g.name: g for g in pruning.prefill_groups(ROWS)}, {g.name: g for g in pruning.window_groups(ROWS)}

    for name in ("h2o", "look_m"):
        prefill, win = groups(name)
        assert set(prefill) == {"all"} and not win and torch.equal(prefill["all"].rows, every)
    for name in ("snapkv", "pyramidkv", "madakv"):
        prefill, win = groups(name)
        assert not prefill and set(win) == {"window"} and torch.equal(win["window"].rows, window)
    for k, source in ((1, 0), (3, 2), (100, LAYERS - 1)):
        prefill, win = groups("fastv", layer=k)
        assert not prefill and torch.equal(win["last"].rows, torch.tensor([L - 1]))
        assert win["last"].layers == frozenset({source})
    prefill, win = groups("csp", window_ratio=0.5)  # the last round(9.5) = 10 of 19 rows: positions 9..18
    assert torch.equal(prefill["self"].rows, torch.arange(L - 10, V0 + N)) and prefill["self"].normalize == "softmax1"
    assert torch.equal(win["cross"].rows, window) and win["cross"].normalize == "softmax1"
    prefill, win = groups("das", visual_rows=4)
    assert torch.equal(prefill["visual"].rows, V0 + torch.tensor([0, 4, 7, 11])) and torch.equal(
        win["window"].rows, window
    )
    prefill, _ = groups("hae", layer=2)
    assert torch.equal(prefill["all"].rows, every) and prefill["all"].moments
    assert prefill["all"].layers == frozenset({2})
    prefill, win = groups("retentive_kv", visual_rows=N)
    assert torch.equal(prefill["spread"].rows, torch.arange(V0, V0 + N)) and prefill["spread"].entropy
    assert torch.equal(win["window"].rows, window)


# --- full, random, streaming_llm ----------------------------------------------------------------


def test_full_keeps_every_entry():
    """``full`` keeps the cache as it is. Catches a reference that drops anything."""
    pruning = method("full", 1.0)
    state, result, originals = prune(pruning, context())
    for layer, (keys, values) in zip(state.cache.layers, originals, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    assert result.visual_kept == N


def test_random_is_seeded_and_one_set_for_every_layer_and_head():
    """A seed is a kept set: the same seed keeps the same tokens, in every layer and KV head,
    and another seed others. Catches an unseeded random (global RNG), one seeded per layer or per
    call, and one ignoring its ``seed``."""
    sets = {}
    for seed in (0, 1, 2):
        runs = [kept(prune(method("random", 0.5, seed=seed), context())[0]) for _ in range(2)]
        assert runs[0] == runs[1], "the same seed keeps the same tokens"
        first = runs[0][0][0]
        assert len(first) == N // 2
        assert all(heads == [first] * KV_HEADS for heads in runs[0]), "one kept set for every layer and head"
        sets[seed] = frozenset(first)
    assert len(set(sets.values())) == 3, "different seeds keep different tokens"


def test_random_is_uniform_over_positions():
    """Over many seeds every visual token is kept about ``budget`` of the time (each stays in
    about 160 of 320 draws: a fair binomial is within 50 of that with overwhelming probability).
    Catches a "random" that prefers early or late tokens, or keeps a fixed block."""
    ctx = context()
    counts = torch.zeros(N)
    draws = 320
    for seed in range(draws):
        pruning = method("random", 0.5, seed=seed)
        scores = pruning.score(0, ctx)
        counts += pruning.select(scores, pruning.keep_counts(scores, N // 2, ctx))[0].float()
    assert bool(((counts - draws / 2).abs() < 50).all()), counts.tolist()


def test_streaming_llm_keeps_the_sinks_and_the_most_recent_tokens():
    """With ``n_sink`` 2 and 6 slots: the first two visual tokens and the last four, in every
    layer and KV head; with no sinks, the last six. Catches a reversed StreamingLLM (keeping the
    oldest tokens), one dropping its sinks, and one with the sinks at the end."""
    state, _, _ = prune(method("streaming_llm", 0.5, n_sink=2), context())
    assert kept(state) == [[{0, 1, 8, 9, 10, 11}] * KV_HEADS] * LAYERS
    state, _, _ = prune(method("streaming_llm", 0.5, n_sink=0), context())
    assert kept(state) == [[{6, 7, 8, 9, 10, 11}] * KV_HEADS] * LAYERS


def test_streaming_llm_recency_is_token_order_not_cache_slot():
    """Recency is the token's order in the conversation, not where its entry sits in the cache: on
    a layer whose entries hold tokens in reverse order, the kept tokens are still the earliest
    ``n_sink`` and the latest ones. Catches a StreamingLLM ranking by slot index."""
    slots = torch.arange(V0, V0 + N)
    order = torch.arange(V0 + N - 1, V0 - 1, -1)  # slot i holds token N-1-i
    frames = (order - V0) // PER_FRAME
    view = LayerView.of_tokens(slots, frames, order, KV_HEADS)
    ctx = context(views=[view] * LAYERS, frames_seen=FRAMES, visual_seen=N)
    pruning = method("streaming_llm", 0.5, n_sink=2)
    scores = pruning.score(0, ctx)
    mask = pruning.select(scores, pruning.keep_counts(scores, 6, ctx))[0]
    tokens = {int(order[i]) - V0 for i in mask.nonzero().flatten()}
    assert tokens == {0, 1, 8, 9, 10, 11}


# --- h2o, look_m -------------------------------------------------------------------------------

#: Column sums H2O reads, per KV head. KV head 0: tokens 0-2 have the largest sums but, being
#: early, are seen by many rows; tokens 9-11 draw more attention per row that sees them.
H2O_COLSUM = tensor(
    [
        [3.0, 2.9, 2.8, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 2.0, 2.1, 2.2],
        [0.5, 0.45, 0.4, 0.35, 4.0, 3.9, 3.8, 0.3, 0.25, 0.2, 0.15, 0.1],
    ]
)
#: Every prompt row (causal): the key at position p is seen by the L - p rows from p on.
CAUSAL_VISIBLE = torch.arange(L, 0, -1)


def h2o_context(colsum: torch.Tensor = H2O_COLSUM) -> PruneContext:
    all_rows = stats(columns(split_groups(colsum), 0.5) / L, L, CAUSAL_VISIBLE)
    return context(record(all=all_rows))


def test_h2o_keeps_the_largest_accumulated_attention_per_kv_head():
    """H2O ranks by the raw column sum over every prompt row, averaged over each GQA group, per KV
    head: {0, 1, 2} and {4, 5, 6}. Catches an H2O that divides by the rows that see a token (the
    causal mean keeps {9, 10, 11}), one that reads only the first query head of a group ({0, 2,
    10}), and one sharing one set between KV heads."""
    state, _, _ = prune(method("h2o", 0.25), h2o_context())
    assert kept(state) == [[{0, 1, 2}, {4, 5, 6}]] * LAYERS


def test_look_m_forces_the_recent_tokens_then_ranks_by_h2o_scores():
    """LOOK-M: the latest ``recent_ratio`` of the visual tokens always stay (3 of 12: {9, 10,
    11}), the other slots go to the H2O heavy hitters; with no recent share it is H2O. Catches a
    LOOK-M without its recent block, with the block at the start, or scoring other than H2O."""
    colsum = tensor(
        [
            [3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 0.5, 0.4, 0.3, 0.12, 0.11, 0.1],
            [0.5, 0.4, 0.3, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 0.12, 0.11, 0.1],
        ]
    )
    state, _, _ = prune(method("look_m", 0.5, recent_ratio=0.25, merge=0), h2o_context(colsum))
    assert kept(state) == [[{0, 1, 2, 9, 10, 11}, {3, 4, 5, 9, 10, 11}]] * LAYERS
    state, _, _ = prune(method("look_m", 0.25, recent_ratio=0.0, merge=0), h2o_context())
    assert kept(state) == [[{0, 1, 2}, {4, 5, 6}]] * LAYERS


def test_look_m_merges_each_evicted_entry_into_its_most_similar_kept_entry():
    """Pivot merge: an evicted entry is averaged into the kept entry whose key is most similar
    (cosine), per head; with ``merge`` 0 nothing is rewritten. Entries A=(1,0), B=(0,1) kept; C
    (close to A) and E (close to B) evicted: A becomes mean(A, C), B mean(B, E). Catches merging
    into the least similar entry, summing instead of averaging, and a ``merge`` switch that does
    nothing."""
    keys = tensor([[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]]])  # [1 head, 4 entries, 2]
    values = tensor([[[1.0], [2.0], [3.0], [5.0]]])
    mask = torch.tensor([[True, True, False, False]])
    merged_k, merged_v = pivot_merge(keys, values, mask)
    assert torch.allclose(merged_k[0, 0], tensor([0.95, 0.05])) and torch.allclose(merged_k[0, 1], tensor([0.05, 0.95]))
    assert merged_v[0, :2, 0].tolist() == [2.0, 3.5]
    ctx = context()
    merging, plain = method("look_m", 0.5), method("look_m", 0.5, merge=0)
    got_k, got_v = merging.post_select(0, keys, values, mask, ctx)
    assert torch.equal(got_k, merged_k) and torch.equal(got_v, merged_v)
    got_k, got_v = plain.post_select(0, keys, values, mask, ctx)
    assert torch.equal(got_k, keys) and torch.equal(got_v, values)


# --- snapkv, pyramidkv, fastv --------------------------------------------------------------------

#: Window attention per KV head: a lone spike at token 5 and a cluster at 8-10 (KV head 1: mirrored).
SPIKE_AND_CLUSTER = tensor([0, 0, 0, 0, 0, 5.0, 0, 0, 3.0, 3.1, 2.9, 0])
SNAP = torch.stack([SPIKE_AND_CLUSTER, SPIKE_AND_CLUSTER.flip(0)])


def mirrored(tokens: set[int]) -> set[int]:
    return {N - 1 - j for j in tokens}


def window_context(per_kv: torch.Tensor = SNAP) -> PruneContext:
    return context(window=record(window=stats(columns(split_groups(per_kv), 0.2), 3)))


@pytest.mark.parametrize(
    ("kernel", "max_pool", "expected"),
    [(1, 0, {5, 8, 9}), (3, 0, {8, 9, 10}), (3, 1, {4, 5, 6})],
    ids=["no-pool", "avg-pool", "max-pool"],
)
def test_snapkv_pools_the_window_attention_per_kv_head(kernel, max_pool, expected):
    """SnapKV ranks the window's mean attention, GQA-averaged, pooled over neighbouring tokens,
    per KV head. Unpooled, the spike (5) and the cluster's best two (9, 8) win; average pooling
    (width 3, zero padding) favours the cluster {8, 9, 10}; max pooling spreads the spike to
    {4, 5, 6}. KV head 1's statistics are mirrored, so is its kept set. Catches a SnapKV without
    its pooling, with the wrong pooling, or sharing one set between KV heads."""
    state, _, _ = prune(method("snapkv", 0.25, kernel=kernel, max_pool=max_pool), window_context())
    assert kept(state) == [[expected, mirrored(expected)]] * LAYERS


def test_pyramidkv_budgets_decrease_linearly_with_depth_around_the_mean():
    """PyramidKV: 3 slots on average, β 3: min 1, max 5, layer l keeps 5 − l·4/3 → 5, 4, 2, 1
    (mean 3), each layer the best of SnapKV's ranking (nested sets); the cache lengths follow.
    Catches budgets that increase with depth, uniform budgets, a mean other than the budget, and
    per-layer sets other than SnapKV's top-k."""
    ranking = torch.stack([torch.arange(N, 0, -1.0), torch.arange(1.0, N + 1)])  # KV head 0: early first
    state, result, _ = prune(method("pyramidkv", 0.25, beta=3, kernel=1), window_context(ranking))
    counts = [5, 4, 2, 1]
    assert kept(state) == [[set(range(c)), set(range(N - c, N))] for c in counts]
    assert result.layer_lengths == [V0 + TEXT_AFTER + c for c in counts]


def test_pyramidkv_is_uniform_when_the_pyramid_does_not_fit():
    """At 75% (9 slots) the deepest-first budget 2·9 − 9/β exceeds the 12 visual tokens: every
    layer keeps 9, as SnapKV. Catches a pyramid that overflows or clips."""
    ranking = torch.stack([torch.arange(N, 0, -1.0), torch.arange(1.0, N + 1)])
    state, result, _ = prune(method("pyramidkv", 0.75, beta=3, kernel=1), window_context(ranking))
    assert kept(state) == [[set(range(9)), set(range(3, N))]] * LAYERS
    assert result.layer_lengths == [V0 + TEXT_AFTER + 9] * LAYERS


def fastv_context() -> PruneContext:
    """Layer l's last-token attention (head-averaged) favours tokens 3l..3l+2."""
    per_layer = {}
    for layer in range(LAYERS):
        favourite = torch.full((N,), 0.1) - 0.001 * torch.arange(N)
        favourite[3 * layer : 3 * layer + 3] = tensor([1.0, 0.9, 0.8])
        per_layer[layer] = stats(columns(all_heads(favourite), 0.3))
    return context(window=record(last=per_layer))


@pytest.mark.parametrize(("k", "source"), [(1, 0), (2, 1), (3, 2), (100, 3)])
def test_fastv_applies_layer_k_minus_1_choice_to_every_layer(k, source):
    """FastV: the last prompt token's head-averaged attention at layer K−1 (clamped to the model)
    picks one kept set, applied to every layer and KV head. Catches a FastV that ignores its
    ``layer`` parameter, scores each layer by its own attention, or averages over part of the
    heads."""
    state, _, _ = prune(method("fastv", 0.25, layer=k), fastv_context())
    chosen = set(range(3 * source, 3 * source + 3))
    assert kept(state) == [[chosen] * KV_HEADS] * LAYERS


# --- csp --------------------------------------------------------------------------------------


def csp_context() -> PruneContext:
    """KV head 0: cross attention favours 0 > 1 > 2 > 3; self attention 0 > 6 > 7 > 8 > 1.
    KV head 1: mirrored."""
    cross = tensor([0.9, 0.8, 0.78, 0.6, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03])
    self_ = tensor([0.95, 0.7, 0.05, 0.04, 0.03, 0.02, 0.9, 0.8, 0.75, 0.01, 0.015, 0.005])
    per_kv = lambda x: split_groups(torch.stack([x, x.flip(0)]))  # noqa: E731
    return context(record(self=stats(columns(per_kv(self_)), 2)), record(cross=stats(columns(per_kv(cross)), 3)))


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [(0.5, {0, 1, 6, 7}), (1.0, {0, 1, 2, 3}), (0.0, {0, 6, 7, 8})],
    ids=["half", "cross-only", "self-only"],
)
def test_csp_splits_slots_between_cross_and_self_top_k_without_duplicates(ratio, expected):
    """CSP, 4 slots: ``cross_ratio`` of them to the best cross (text→visual) scores, the rest to
    the best self (visual→visual) scores among the tokens not chosen yet: at 0.5, {0, 1} by cross,
    then 6, 7 by self (0 is taken, so the next best goes in). Catches a CSP without its self term
    (or cross term), one that can pick a token twice (leaving the slot to some other ranking), and
    one sharing one set between KV heads."""
    state, _, _ = prune(method("csp", 1 / 3, cross_ratio=ratio), csp_context())
    assert kept(state) == [[expected, mirrored(expected)]] * LAYERS


# --- madakv ----------------------------------------------------------------------------------


def madakv_context(preference: tuple[float, float]) -> PruneContext:
    """KV head h spends ``preference[h]`` of its window attention on the visual tokens (KV head
    0 ranks early tokens first, KV head 1 late ones); the rest goes to the text."""
    shape = torch.arange(N, 0, -1.0)
    visual = torch.stack([p * s / s.sum() for p, s in zip(preference, (shape, shape.flip(0)), strict=True)])
    text = torch.tensor([(1 - preference[h // 2]) / (L - N) for h in range(HEADS)])
    mean = columns(split_groups(visual), text[:, None].expand(HEADS, L))
    return context(window=record(window=stats(mean, 3)))


@pytest.mark.parametrize(
    ("preference", "counts"),
    [((0.3, 0.6), (4, 6)), ((0.6, 0.3), (6, 4)), ((0.45, 0.45), (6, 6)), ((0.04, 0.8), (2, 6))],
    ids=["head1-visual", "head0-visual", "equal", "min_keep"],
)
def test_madakv_per_head_budgets_follow_modality_preference(preference, counts):
    """MadaKV-like: KV head h keeps ``slots · π_h / mean(π)`` exact tokens (clamped to
    [min_keep · slots, slots]), its best by window attention, and its freed slots hold recycled
    summaries, so every head ends with the 6 slots. π = (0.3, 0.6): 6·0.3/0.45 = 4 and 8 → 6;
    π = (0.04, 0.8): 0.57 → min_keep's round(0.25·6) = 2. Catches uniform per-head budgets,
    budgets against the preference (or from visual attention alone), a missing clamp, and
    freed slots that hold no summaries."""
    state, _, _ = prune(method("madakv", 0.5), madakv_context(preference))
    expected = [set(range(counts[0])), set(range(N - counts[1], N))]
    assert kept(state) == [expected] * LAYERS
    for layer in range(LAYERS):
        assert recycled(state, layer) == [6 - counts[0], 6 - counts[1]]
    state, _, _ = prune(method("madakv", 0.5, compensate=0), madakv_context(preference))
    assert kept(state) == [[set(range(6)), set(range(6, N))]] * LAYERS, "compensate=0: every head its 6 best"


# --- das ----------------------------------------------------------------------------------------

#: Visual query rows for DAS's frame score: all 12, causal, so visual token j is seen by 12 − j.
DAS_VISIBLE = torch.cat([torch.full((V0,), N), torch.arange(N, 0, -1), torch.zeros(TEXT_AFTER, dtype=torch.long)])


def das_context(c=None, r=None, aware: bool = True, heads=all_heads) -> PruneContext:
    """``c`` the window's mean attention per visual token; ``r`` the frame score (attention per
    visual row that can see the token), recorded as column sums over ``DAS_VISIBLE`` rows."""
    window = record(window=stats(columns(heads(c), 0.05), 3)) if c is not None else None
    prefill = None
    if r is not None:
        colsum = columns(heads(r)) * DAS_VISIBLE.float()
        prefill = record(visual=GroupStats(colsum, DAS_VISIBLE, N))
    return context(prefill, window, aware)


def test_das_frame_score_divides_by_the_rows_that_see_a_token():
    """DAS's frame score r is each token's attention per visual row that can see it: late tokens
    {8..11} have the most per row, early ones the largest raw sums (seen by more rows). α 0, no
    subsidy: {8, 9, 10, 11}. Catches a DAS whose frame score is the raw column sum (H2O's bias)."""
    r = tensor([0.15, 0.15, 0.15, 0.15, 0.14, 0.14, 0.14, 0.14, 0.3, 0.29, 0.28, 0.27])
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=0, gamma=1), das_context(r=r))
    assert kept(state) == [[{8, 9, 10, 11}] * KV_HEADS] * LAYERS


#: A question score favouring tokens 0, 1 (then 2, 3, …), a hundred times larger than the frame
#: score favouring 11, 10 (then 9, 8, …): the mix must put them on one scale.
DAS_C = 100 * tensor([0.4, 0.3, *(0.03 + 0.001 * torch.arange(9, -1, -1)).tolist()])
DAS_R = DAS_C.flip(0) / 100


@pytest.mark.parametrize(
    ("params", "aware", "expected"),
    [
        ({"alpha": 0.5}, True, {0, 1, 10, 11}),
        ({"alpha": 1.0}, True, {0, 1, 2, 3}),
        ({"alpha": 0.0}, True, {8, 9, 10, 11}),
        ({"alpha": 0.0, "agnostic_alpha": 1.0}, False, {0, 1, 2, 3}),
        ({"alpha": 1.0, "agnostic_alpha": 0.0}, False, {8, 9, 10, 11}),
    ],
    ids=["mixed", "question-only", "frames-only", "agnostic-question", "agnostic-frames"],
)
def test_das_mixes_normalised_question_and_frame_scores(params, aware, expected):
    """With γ 1 and one global ranking (``quota`` 0), DAS keeps the top-k of α·c/Σc + (1−α)·r/Σr,
    one set for every KV head; α is ``agnostic_alpha`` when the question is not in the prefill. At
    α 0.5 each term brings its two favourites although c is a hundred times larger than r. Catches
    a mix without the normalisation (c would win all four slots), with α applied the wrong way
    round, or ignoring the mode."""
    ctx = das_context(DAS_C, DAS_R, aware)
    state, _, _ = prune(method("das", 1 / 3, quota=0, gamma=1, **params), ctx)
    assert kept(state) == [[expected] * KV_HEADS] * LAYERS


def test_das_position_prior_subsidises_later_frames():
    """``subsidy`` 0: frame m's scores are multiplied by γ^(m/(M−1)), here 1, √2, 2. Frame 0
    leads before the subsidy ({0, 1, 2, 3}); with it frame 2's best two (1.12, 0.96) join frame 0's
    best two (1.0, 0.9). Catches a DAS without its subsidy toward later frames, or one favouring
    earlier frames."""
    c = tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.56, 0.48, 0.3, 0.2])
    ctx = das_context(c)
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=1, gamma=1), ctx)
    assert kept(state) == [[{0, 1, 2, 3}] * KV_HEADS] * LAYERS
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=1, gamma=2, subsidy=0), ctx)
    assert kept(state) == [[{0, 1, 8, 9}] * KV_HEADS] * LAYERS


#: Frame m's scores: exp(−λ·m) · (1.4, 1.2, 0.8, 0.6): frame means decay at exactly λ per frame.
SHAPE = tensor([1.4, 1.2, 0.8, 0.6])


def decaying(rate: float) -> torch.Tensor:
    return torch.cat([math.exp(-rate * m) * SHAPE for m in range(FRAMES)])


@pytest.mark.parametrize(
    ("rate", "params", "expected"),
    [
        (0.5, {"gamma": 1}, {0, 1, 2, 4}),
        (0.5, {"gamma": 2}, {0, 1, 4, 5}),
        (0.5, {"gamma": 10}, {0, 1, 4, 8}),
        (0.5, {"gamma": 10, "lambda_max": 0.3}, {0, 1, 4, 5}),
        (-0.5, {"gamma": 1}, {4, 8, 9, 10}),
        (-0.5, {"gamma": 10}, {4, 8, 9, 10}),
    ],
    ids=["gamma1", "gamma2", "gamma10", "lambda-clipped", "rising", "rising-gamma10"],
)
def test_das_fitted_decay_subsidy(rate, params, expected):
    """``subsidy`` 1: fit log(frame mean) ≈ a − λ·m (here λ = 0.5 exactly), clip λ to [0,
    ``lambda_max``], weight frame m by exp(λ·m·(1 − 1/γ)). γ 2 lifts frame 1 (×1.28) past frame 0's
    third token; γ 10 lifts frame 2 too; ``lambda_max`` 0.3 caps that; rising scores (λ < 0) get
    no subsidy at all. Catches a DAS without its subsidy toward later frames, one that ignores γ
    or ``lambda_max``, and one that penalises later frames when attention rises."""
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=1, subsidy=1, **params), das_context(decaying(rate)))
    assert kept(state) == [[expected] * KV_HEADS] * LAYERS


def test_das_quota_splits_slots_by_frame_mass():
    """``quota`` 1: frame masses 0.5, 0.25, 0.25 split 4 slots 2, 1, 1, each frame its best:
    {0, 1, 6, 8}; the global top-4 (``quota`` 0) is {0, 1, 2, 6}. Catches a quota that is ignored or
    not proportional to mass, and a default that is not the quota."""
    c = tensor([0.2, 0.15, 0.13, 0.02, 0.01, 0.04, 0.12, 0.08, 0.11, 0.08, 0.03, 0.03])
    state, _, _ = prune(method("das", 1 / 3, alpha=1, gamma=1, quota=1), das_context(c))
    assert kept(state) == [[{0, 1, 6, 8}] * KV_HEADS] * LAYERS
    state, _, _ = prune(method("das", 1 / 3, alpha=1, gamma=1), das_context(c))  # the default
    assert kept(state) == [[{0, 1, 6, 8}] * KV_HEADS] * LAYERS
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=1, gamma=1), das_context(c))
    assert kept(state) == [[{0, 1, 2, 6}] * KV_HEADS] * LAYERS


def test_das_per_head_and_shared_selection():
    """``per_head`` 1: each KV head keeps its own group's favourites (frame 0, frame 2); 0: one
    set from all heads' mean (frame 0 weighs more). Catches ``per_head`` ignored either way."""
    c = torch.stack([tensor([0.4, 0.39, 0.38, 0.37, *[0.01] * 8]), tensor([*[0.01] * 8, 0.2, 0.19, 0.18, 0.17])])
    ctx = das_context(c, heads=split_groups)
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=1, gamma=1, per_head=1), ctx)
    assert kept(state) == [[{0, 1, 2, 3}, {8, 9, 10, 11}]] * LAYERS
    state, _, _ = prune(method("das", 1 / 3, quota=0, alpha=1, gamma=1), ctx)
    assert kept(state) == [[{0, 1, 2, 3}] * KV_HEADS] * LAYERS


def test_das_pools_within_frame_spans_only():
    """``kernel`` 3 average-pools the mix inside each frame span: the spike at token 3 (the last
    of frame 0) lifts token 2, not token 4 across the boundary, so {2, 3} stay; unpooled, {3, 9};
    pooled across the boundary, {3, 4}. The first ``skip_first`` layers keep every token. Catches
    pooling that crosses frames or is ignored, and ``skip_first`` ignored."""
    c = tensor([0.005, 0.01, 0.02, 1.0, 0.05, 0.04, 0.006, 0.007, 0.008, 0.3, 0.009, 0.004])
    state, _, _ = prune(method("das", 1 / 6, quota=0, alpha=1, gamma=1, kernel=3, skip_first=1), das_context(c))
    assert kept(state) == [[set(range(N))] * KV_HEADS] + [[{2, 3}] * KV_HEADS] * (LAYERS - 1)


# --- hae ----------------------------------------------------------------------------------------


def hae_stats(mean, std) -> GroupStats:
    """Every prompt row (causal) gives token p attention with ``mean[p]`` and ``std[p]`` over the
    rows that see it, in every head (with moments)."""
    mean, std = tensor(mean), tensor(std)
    visible = CAUSAL_VISIBLE.float()
    colsum = (mean * visible)[None].expand(HEADS, L).clone()
    colsq = ((std**2 + mean**2) * visible)[None].expand(HEADS, L).clone()
    return GroupStats(colsum, CAUSAL_VISIBLE, L, colsq)


def padded(visual: list[float], text: float = 0.05) -> list[float]:
    return [text] * V0 + visual + [text] * TEXT_AFTER


#: Layer 1: tokens 0-2 high mean and flat; 9-11 lower mean, large spread. Layer 0: 3-5 lead.
HAE_MEAN = {
    0: padded([0.02, 0.02, 0.02, 0.3, 0.31, 0.32, *[0.02] * 6]),
    1: padded([0.1, 0.101, 0.102, *[0.02] * 6, 0.05, 0.05, 0.05]),
}
HAE_STD = {0: padded([0.0] * N, 0.0), 1: padded([0.0] * 3 + [0.01] * 6 + [0.1, 0.101, 0.102], 0.0)}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"layer": 1, "variance_weight": 0}, {0, 1, 2}),
        ({"layer": 1, "variance_weight": 1}, {9, 10, 11}),
        ({"layer": 0, "variance_weight": 1}, {3, 4, 5}),
    ],
    ids=["mean", "mean+std", "layer0"],
)
def test_hae_scores_mean_plus_spread_at_one_layer_and_broadcasts(params, expected):
    """HAE: score = mean + ``variance_weight``·std of a token's attention over the rows that see
    it, at layer ``layer`` only, and the one kept set is applied to every layer. Mean alone keeps
    the flat {0, 1, 2}; with the spread, {9, 10, 11} (0.05 + 0.1 > 0.1); layer 0 prefers {3, 4, 5}.
    Catches an HAE without its spread term, one that ignores ``layer``, and one choosing per layer."""
    ctx = context(record(all={layer: hae_stats(HAE_MEAN[layer], HAE_STD[layer]) for layer in (0, 1)}))
    state, result, _ = prune(method("hae", 0.25, interval=0, **params), ctx)
    assert kept(state) == [[expected] * KV_HEADS] * LAYERS
    assert result.visual_kept == 3


def test_hae_joint_stage_evicts_text_and_visual_on_per_modality_scales():
    """``text_ratio`` 0.7 of the 3 unprotected text tokens (positions 1-3; ``sinks`` 1 protects
    position 0) → 2 more entries go, the lowest of text and kept visual tokens each divided by its
    modality's mean: text (1.0, 0.2, 1.8)/1.0 and visual (0.05, 0.1, 0.15)/0.1, so position 2
    (0.2) and visual token 0 (0.5). The question is never evicted. Catches a joint stage on raw
    scores (it would evict two visual tokens), one that evicts sinks or the question."""
    mean = [0.5, 1.0, 0.2, 1.8, 0.05, 0.1, 0.15, *[0.01 - 0.0001 * i for i in range(9)], 0.001, 0.001, 0.001]
    ctx = context(record(all=hae_stats(mean, [0.0] * L)))
    pruning = method("hae", 0.25, layer=0, variance_weight=0, sinks=1, text_ratio=0.7, interval=0)
    assert pruning.kept_positions(ctx).tolist() == [0, 1, 3, V0 + 1, V0 + 2, *range(V0 + N, L)]


# --- retentive_kv ----------------------------------------------------------------------------


def test_retentive_kv_selects_like_snapkv_and_folds_the_evicted_tokens_into_gated_memory():
    """RetentiveKV: SnapKV's kept sets ({0, 1, 2} and {9, 10, 11} here); per layer and KV head
    the evicted tokens fold into S = Σ β_j φ(k_j) v_jᵀ, z = Σ β_j φ(k_j) with β_j = H_j ^
    ``entropy_power`` (entropies set to j/11), and the gate is ``gate_scale`` × the window
    attention the evicted tokens held, clipped to 1. Catches folding the kept tokens (or all),
    a β that ignores entropy, and a gate not from the evicted tokens' window share."""
    window = torch.stack([tensor([0.2, 0.19, 0.18, *[0.01] * 9]), tensor([*[0.02] * 9, 0.15, 0.16, 0.17])])
    entropy = torch.arange(N) / (N - 1)
    colsum = torch.ones(HEADS, L)
    colplogp = colsum * (torch.log(colsum) - columns(entropy[None].expand(HEADS, N)) * math.log(N))
    visible = torch.full((L,), N)
    ctx = context(
        record(spread=GroupStats(colsum, visible, N, None, colplogp)),
        record(window=stats(columns(split_groups(window), 0.1), 3)),
    )
    pruning = method("retentive_kv", 0.25, kernel=1, entropy_power=2, gate_scale=2)
    state, _, originals = prune(pruning, ctx)
    kept_sets = [{0, 1, 2}, {9, 10, 11}]
    assert kept(state) == [kept_sets] * LAYERS
    memory = state.extension
    for layer, (keys, values) in enumerate(originals):
        for h in range(KV_HEADS):
            evicted = torch.tensor([j not in kept_sets[h] for j in range(N)])
            beta = (entropy**2 * evicted)[:, None]
            phi = torch.nn.functional.elu(keys[0, h, V0 : V0 + N]) + 1
            expected_state = (beta * phi).T @ values[0, h, V0 : V0 + N]
            got = memory.layers[layer]
            assert torch.allclose(got.state[0, h], expected_state, atol=1e-5)
            assert torch.allclose(got.normalizer[0, h], (beta * phi).sum(dim=0), atol=1e-5)
            share = float(window[h][evicted].sum())
            assert math.isclose(float(got.gate[0, h]), min(1.0, 2 * share), rel_tol=1e-5)
    state, _, _ = prune(method("retentive_kv", 0.25, kernel=1, gate_scale=100), ctx)
    assert state.extension.layers[0].gate.tolist() == [[1.0, 1.0]], "the gate is clipped to 1"
