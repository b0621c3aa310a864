"""``videoqa eval``: accuracy of a model over a suite, for methods × budgets × modes × chunkings.

Runs each sample through the same worker code the service uses: the crash-isolated media decoder,
the family adapter, the pruned prefill, and the greedy decode loop, in three modes:

- ``aware``: the question is in the prefill and guides the pruning;
- ``agnostic``: the video is pruned first, without a question, and the question follows;
- ``followup``: the prefill asks another question first (``--first-question``), which guides the
  pruning and is answered; the sample's question is the session's second turn. This is the
  service's multi-turn flow, and the mode in which question-aware pruning can lose what a later
  question needs. Writes ``results.json`` (every prediction), ``results.md`` (accuracy overall,
per question family, per needle-position bucket, KV bytes per configuration) and two PNG plots:
accuracy vs budget per method, and accuracy vs needle position at 20% (the myopia curve).

Every sample is prefilled as the worker does it (``PrunedPrefill.steps``): ``--chunk-frames 0``
(the default) runs the whole prompt in one forward and prunes once, the one-shot path;
``--chunk-frames 16`` runs it 16 frames at a time, and a progressive method compresses the cache
after every chunk (a one-shot method prunes once at the end). ``--max-visual-tokens N`` caps the
visual entries a layer keeps, whatever the video's length (progressive methods only; the others
are left out of capped configurations). ``--prefill-slack S``: between chunks a progressive
method keeps S times its budget (the worker's ``VIDEOQA_PREFILL_SLACK``; default: the worker's
default). All three take comma lists and multiply the grid.

``--reductions none,evs:0.25,vidcom2:0.5`` (``NAME:RETENTION``, comma separated; default
``none``) multiplies the grid too: every configuration runs under each reduction listed, which
drops visual tokens before the language model (``worker/reduction/``; it keeps ``RETENTION`` of
them; ``none``: no reduction), and its KV method then prunes the cache of what is left at its
budget (a fraction of the tokens the language model sees: evs at 50% and das at 40% keep 20% of
the video's tokens; the ranking and the plots place a configuration at that share). Such a
configuration is named ``evs@25%+das`` (``evs@25%``: the reduction alone, under ``full``); its
rows record the visual tokens that went into the language model and the prefill's seconds
(the language model's, and the whole prefill's with the reduction), and the table shows their
means when a reduction is in it. The evidence a reduction dropped counts as not kept; the
``oracle`` under a reduction keeps the evidence the reduction left (it is the bound of the KV
methods under that reduction).

    videoqa eval --suite v2 --split test --count 180 --frames 16,64 --methods full,das \\
        --budgets 1,0.4,0.2 --reductions none,evs:0.25,evs:0.5,vidcom2:0.25 --modes agnostic,followup \\
        --out eval-reduced/
    videoqa eval --model videoqa-demo --split test --count 60 --frames 16,64 \\
        --methods full,das,snapkv --budgets 1,0.5,0.2,0.1 --modes aware,agnostic --out eval/
    videoqa eval --milebench /data/MileBench --datasets ActionSequence --out eval-milebench/
    videoqa eval --merge eval-a/ eval-b/ --out eval/      # one report from runs split over processes
    videoqa eval --frames 32,64 --methods das,snapkv --budgets 0.2 --modes agnostic \\
        --chunk-frames 0,16 --out eval-chunked/                # one-shot vs chunked + progressive
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from videoqa.lab.ranking import kept_share, ranking
from videoqa.lab.sample import Sample, is_correct

if TYPE_CHECKING:
    import torch

    from videoqa.worker.pruning.pipeline import ChunkDone, Prefilled, StepDone
    from videoqa.worker.reduction.prompt import Reduced

BUCKETS = ("0-25%", "25-50%", "50-75%", "75-100%")
#: The configuration that keeps exactly each sample's evidence tokens (suite v2), then random ones.
ORACLE = "oracle"
MODES = ("aware", "agnostic", "followup")
#: The first turn of ``followup`` mode: a suite question that draws the pruning to the last frames.
FIRST_QUESTION = "What shape is in the last frame?"


@dataclass(frozen=True)
class Config:
    """One pruning configuration: ``name`` labels it in the results (the method's name unless it
    is a variant with its own ``params``); ``chunk_frames`` frames per prefill chunk (0: one
    forward, the one-shot path); ``max_visual_tokens`` the absolute cap (0: none);
    ``prefill_slack`` how many times its budget a progressive method keeps between chunks (0 when
    there are no chunks); ``reduction`` the reduction before the language model ("": none) and
    ``retention`` the share of the visual tokens it keeps."""

    method: str
    budget: float
    mode: str
    params: tuple[tuple[str, float], ...] = ()
    name: str = ""
    chunk_frames: int = 0
    max_visual_tokens: int = 0
    prefill_slack: float = 0.0
    #: Attention heads whose statistics the method does not score with (``"1:0"``: layer 1's head
    #: 0; see ``lab/heads.py``); empty: all heads.
    left_out: str = ""
    reduction: str = ""
    retention: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")

    @property
    def method_name(self) -> str:
        """What the results call the method: its name, under its reduction (``evs@25%+das``)."""
        return reduced_name(self.name or self.method, self.reduction, self.retention)

    @property
    def label(self) -> str:
        return label(
            self.method_name,
            self.budget,
            self.mode,
            self.chunk_frames,
            self.max_visual_tokens,
            self.prefill_slack,
        )


def label(
    method: str, budget: float, mode: str, chunk_frames: int = 0, max_visual_tokens: int = 0, slack: float = 0.0
) -> str:
    """``das@0.2/agnostic``, with ``/chunk16/slack2`` and ``/cap26`` when the prefill is chunked or
    capped (no slack part for rows of runs that did not record it)."""
    text = f"{method}@{budget:g}/{mode}"
    if chunk_frames:
        text += f"/chunk{chunk_frames}"
        if slack:
            text += f"/slack{slack:g}"
    if max_visual_tokens:
        text += f"/cap{max_visual_tokens}"
    return text


def reduced_name(method: str, reduction: str, retention: float) -> str:
    """``evs@25%+das``: ``method`` after a reduction before the language model that keeps
    ``retention`` of the visual tokens; ``evs@25%`` for ``full`` (the reduction alone); ``method``
    when there is no reduction."""
    if not reduction:
        return method
    prefix = f"{reduction}@{retention * 100:g}%"
    return prefix if method == "full" else f"{prefix}+{method}"


def parse_reductions(text: str) -> list[tuple[str, float]]:
    """``none,evs:0.25`` -> ``[("", 1.0), ("evs", 0.25)]``, each checked by the worker's registry."""
    from videoqa.worker.errors import InvalidInput
    from videoqa.worker.reduction.registry import build_reduction
    from videoqa.worker.types import ReductionSpec

    out = []
    for item in filter(None, text.split(",")):
        if item == "none":
            out.append(("", 1.0))
            continue
        name, _, value = item.partition(":")
        try:
            retention = float(value)
        except ValueError:
            retention = float("nan")
        if not name or not 0 < retention <= 1:  # (the wire's 0, "keep all", would read as 0% here)
            raise ValueError(f"--reductions: {item!r} is not NAME:RETENTION with RETENTION in (0, 1], or none")
        try:
            build_reduction(ReductionSpec(name, {}, retention))
        except InvalidInput as error:
            raise ValueError(f"--reductions: {item!r}: {error}") from error
        out.append((name, retention))
    if not out:
        raise ValueError("--reductions: nothing given (none: no reduction)")
    return out


def parse_variant(text: str) -> tuple[str, str, tuple[tuple[str, float], ...]]:
    """``NAME=METHOD:key=value,key=value`` (parameters optional) -> ``(name, method, params)``."""
    name, sep, rest = text.partition("=")
    method, _, assignments = rest.partition(":")
    if not sep or not name or not method:
        raise ValueError(f"variant {text!r} is not NAME=METHOD[:key=value,...]")
    params = []
    for assignment in filter(None, assignments.split(",")):
        key, eq, value = assignment.partition("=")
        if not eq:
            raise ValueError(f"variant parameter {assignment!r} is not key=value")
        params.append((key, float(value)))
    return name, method, tuple(params)


@dataclass
class Row:
    sample_id: str
    family: str
    needle: float | None
    method: str
    budget: float
    mode: str
    prediction: str
    answer: str
    correct: bool
    kv_bytes: int
    cache_length: int
    #: Frames per prefill chunk (0: one forward) and the cap on visual entries (0: none); rows of
    #: runs before chunking existed load with both 0.
    chunk_frames: int = 0
    max_visual_tokens: int = 0
    #: Most KV bytes the cache held while the prompt was prefilled (before or between
    #: compressions), and how many chunks ran.
    peak_kv_bytes: int = 0
    chunks: int = 1
    #: The prefill slack of a chunked row (0: no chunks, or a run before the harness recorded it).
    prefill_slack: float = 0.0
    #: Share of the sample's evidence tokens the cache still held as tokens after the prefill
    #: (mean over layers and KV heads; None: the sample does not know its evidence, or an older run).
    evidence_kept: float | None = None
    #: The reduction before the language model ("": none) and the share of the visual tokens it
    #: kept (1.0 without one); ``method`` is then the configuration's name, ``evs@25%+das``.
    reduction: str = ""
    retention: float = 1.0
    #: Visual tokens that went into the language model (after the reduction; 0: an older run).
    llm_visual_tokens: int = 0
    #: Seconds of the language model's prefill (the chunks' forwards, ``ChunkDone.prefill_s``; a
    #: prompt that is not reduced runs the vision tower there, a reduced one ran it in the
    #: reduction), and of the whole prefill (``PrunedPrefill.steps``: reduction, forwards,
    #: compression). Both count the vision tower as if this configuration ran it (see
    #: :func:`vision_once`); 0: an older run.
    prefill_s: float = 0.0
    prefill_total_s: float = 0.0

    @property
    def label(self) -> str:
        return label(self.method, self.budget, self.mode, self.chunk_frames, self.max_visual_tokens, self.prefill_slack)

    @property
    def config_key(self) -> tuple:
        return (self.method, self.budget, self.mode, self.chunk_frames, self.max_visual_tokens, self.prefill_slack)


def bucket(needle: float | None) -> str | None:
    if needle is None:
        return None
    return BUCKETS[min(3, int(needle * 4))]


def evaluate(
    lm,
    samples: list[Sample],
    configs: list[Config],
    *,
    max_new_tokens: int = 6,
    max_resolution: int = 448,
    first_question: str = FIRST_QUESTION,
    progress=None,
) -> list[Row]:
    """Answer every sample under every configuration (greedy), each prefilled as the worker does
    (``PrunedPrefill.steps`` under the configuration's chunking)."""
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.types import GenerationParams, SamplingSpec
    from videoqa.worker.video.decode import MediaDecoder

    gen = ModelRunner(lm)
    greedy = GenerationParams(max_new_tokens=max_new_tokens)
    rows: list[Row] = []
    with MediaDecoder() as decoder:
        for index, item in enumerate(samples):
            spec = SamplingSpec(num_frames=item.num_frames, max_frames=item.num_frames, max_resolution=max_resolution)
            media = decoder.decode(item.kind, item.media, spec, 1.0)
            with vision_once(lm.adapter) as tower:
                rows.extend(_answer(lm, gen, greedy, item, media, configs, first_question, tower))
            if progress:
                progress(index + 1, len(samples))
    return rows


@dataclass
class Tower:
    """The vision tower's seconds under :func:`vision_once`: ``spent`` computing features, and
    ``charged``: every call's as if it had computed them (a reused range costs what it cost the
    first time), so that each configuration's prefill seconds count the tower alike."""

    spent: float = 0.0
    charged: float = 0.0


@contextmanager
def vision_once(adapter) -> Iterator[Tower]:
    """Within one sample every configuration prefills the same frames, so the vision tower runs
    once per frame range (its features are a function of the frames alone, tested equal to the
    worker's path), not once per configuration: most of a small model's prefill. (The one-shot
    forward of a prompt that is not reduced runs the tower inside the model, every time.)"""
    compute = adapter.video_features
    memo = {}
    tower = Tower()

    def reused(inputs, first: int, end: int):
        if (first, end) not in memo:
            started = time.perf_counter()
            features = compute(inputs, first, end)
            memo[first, end] = features, time.perf_counter() - started
            tower.spent += memo[first, end][1]
        features, seconds = memo[first, end]
        tower.charged += seconds
        return features

    adapter.video_features = reused
    try:
        yield tower
    finally:
        del adapter.video_features  # the class's method again


def _answer(
    lm, gen, greedy, item: Sample, media, configs: list[Config], first_question: str, tower: Tower
) -> list[Row]:
    """Every configuration's answer to one sample."""
    from videoqa.lab.heads import leave_out, parse_heads
    from videoqa.worker.model.chunks import Chunking
    from videoqa.worker.pruning.pipeline import PrunedPrefill, run_to_end
    from videoqa.worker.pruning.registry import build_method
    from videoqa.worker.reduction.prompt import reduce_steps
    from videoqa.worker.reduction.registry import build_reduction
    from videoqa.worker.types import PruningSpec, ReductionSpec

    rows = []
    for config in configs:
        chunking = Chunking(frames=config.chunk_frames, slack=config.prefill_slack or Chunking().slack)
        asked = {"aware": item.question, "agnostic": None, "followup": first_question}[config.mode]
        prompt = lm.adapter.prepare(media, asked)
        reduction = build_reduction(ReductionSpec(config.reduction, {}, config.retention))
        ahead = None
        if config.method == ORACLE:  # under a reduction: the evidence it keeps (it is deterministic)
            ahead = run_to_end(reduce_steps(lm.adapter, prompt, reduction)) if reduction else None
            method = oracle_for(item, prompt, config, ahead)
        else:
            spec = PruningSpec(config.method, dict(config.params), config.budget, config.max_visual_tokens)
            method = build_method(spec)
        if config.left_out:
            method = leave_out(method, parse_heads(config.left_out))
        pipeline = PrunedPrefill(gen, method, config.mode != "agnostic", chunking, reduction)
        spent, charged = tower.spent, tower.charged
        done, prefill_s, total_s = _timed(pipeline.steps(prompt))
        if ahead is not None and not ahead.kept_visual.equal(done.reduction.kept_visual):
            raise RuntimeError(f"{item.sample_id}: {config.label}: the reduction kept other tokens the second time")
        tower_s = (tower.charged - charged) - (tower.spent - spent)  # as if this configuration ran the tower
        state, logits = done.state, done.logits
        kv_bytes, cache_length = state.cache_bytes(), state.cache_length
        pruned = config.budget < 1 or bool(config.max_visual_tokens)
        kept = _evidence_kept(item, prompt, state, pruned, done.reduction)
        if config.mode == "agnostic":
            logits = gen.feed(state, gen.turn_input(state, item.question, first=True))
        elif config.mode == "followup":  # answer the first question, then ask this one
            list(gen.stream(state, logits, greedy))
            logits = gen.feed(state, gen.turn_input(state, item.question, first=False))
        tokens = list(gen.stream(state, logits, greedy))
        text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
        rows.append(
            Row(
                item.sample_id,
                item.family,
                item.needle,
                config.method_name,
                config.budget,
                config.mode,
                text,
                item.answer,
                is_correct(text, item),
                kv_bytes,
                cache_length,
                config.chunk_frames,
                config.max_visual_tokens,
                done.peak_kv_bytes,
                done.chunks,
                chunking.slack if config.chunk_frames else 0.0,
                kept,
                reduction=config.reduction,
                retention=config.retention,
                llm_visual_tokens=(done.reduction.prompt if done.reduction else prompt).layout.num_visual_tokens,
                prefill_s=prefill_s + (0.0 if reduction else tower_s),  # a reduced prompt's tower ran before
                prefill_total_s=total_s + tower_s,
            )
        )
    return rows


def _timed(steps: Generator[ChunkDone | StepDone, None, Prefilled]) -> tuple[Prefilled, float, float]:
    """Drive ``PrunedPrefill.steps`` to its end: the outcome, the seconds of its chunks' forwards
    (the sum of their ``ChunkDone.prefill_s``), and the seconds it took in all."""
    from videoqa.worker.pruning.pipeline import ChunkDone

    started, forwards = time.perf_counter(), 0.0
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value, forwards, time.perf_counter() - started
        if isinstance(step, ChunkDone):
            forwards += step.prefill_s


def _evidence_at(item: Sample, prompt):
    """Conversation token indices [k] of the sample's evidence tokens in ``prompt`` (suite v2's
    grid). Raises ``ValueError`` when the sample does not know its evidence, or the model's token
    grid is not the one it was computed for."""
    from videoqa.lab.oracle import evidence_positions
    from videoqa.lab.suite_v2 import DEMO_GRID

    if not item.evidence:
        raise ValueError(f"{item.sample_id}: the oracle needs samples that know their evidence (suite v2)")
    return evidence_positions(prompt.layout, item.evidence, DEMO_GRID.per_patch, prompt.first_index)


def _in_reduced(positions: torch.Tensor, prompt, reduction: Reduced | None) -> torch.Tensor:
    """Conversation token indices ``positions`` [k] of visual tokens of ``prompt`` -> the indices
    in the reduced prompt of those the reduction kept (ascending), in the reduced prompt's own
    indexing (its state's and slot maps'); ``positions`` themselves without a reduction."""
    import torch

    if reduction is None:
        return positions
    evidence = torch.isin(reduction.kept_visual, positions - prompt.first_index)  # [kept visual]
    visual = torch.cat([torch.arange(s, e) for s, e in reduction.prompt.layout.frame_spans])
    return visual[evidence] + reduction.prompt.first_index


def _evidence_kept(item: Sample, prompt, state, pruned: bool, reduction: Reduced | None = None) -> float | None:
    """:func:`~videoqa.lab.oracle.evidence_recall` of a pruned prefill of ``prompt`` (reduced
    first by ``reduction``, if given: an evidence token it dropped is not kept); None where
    :func:`_evidence_at` cannot place the evidence, or where a method pruned without a slot map
    saying which tokens each layer kept (``hae`` evicts one index set from the cache itself): not
    knowing is not keeping everything."""
    from videoqa.lab.oracle import evidence_recall

    if pruned and state.slots is None:
        return None
    try:
        positions = _evidence_at(item, prompt)
    except ValueError:
        return None
    survived = _in_reduced(positions, prompt, reduction)
    if survived.numel() == positions.numel():
        return evidence_recall(state.slots, survived)
    return evidence_recall(state.slots, survived) * survived.numel() / positions.numel()


def oracle_for(item: Sample, prompt, config: Config, reduction: Reduced | None = None):
    """The ``oracle`` bound for one sample: its evidence tokens (suite v2), then random ones;
    under ``reduction``, the evidence tokens it kept (at their indices in the reduced prompt)."""
    from videoqa.lab.oracle import EvidenceOracle

    evidence = _in_reduced(_evidence_at(item, prompt), prompt, reduction)
    return EvidenceOracle(config.budget, evidence, config.max_visual_tokens, **dict(config.params))


def without_heads(configs: list[Config], heads: str) -> list[Config]:
    """A variant of every configuration that scores with attention (not ``full``, ``random`` or
    ``oracle``) that leaves ``heads`` out of its statistics."""
    from videoqa.lab.heads import parse_heads

    tag = "-".join(f"L{layer}H{head}" for layer, chosen in parse_heads(heads).items() for head in chosen)
    unscored = {"full", "random", ORACLE}
    return [
        replace(c, name=f"{c.name or c.method}-without-{tag}", left_out=heads)
        for c in configs
        if c.method not in unscored
    ]


def merge(paths: list[Path]) -> list[Row]:
    """The rows of several runs' ``results.json`` (a grid split over processes or machines).
    A configuration two runs both answered (``full``, typically) is kept once, and must have
    answered every sample the same way in both."""
    rows: dict[tuple, Row] = {}
    for path in paths:
        data = json.loads((path / "results.json" if path.is_dir() else path).read_text())
        for fields in data["rows"]:
            row = Row(**fields)
            key = (row.sample_id, *row.config_key)
            if key in rows and rows[key].prediction != row.prediction:
                raise ValueError(f"{path}: {row.label} answered {row.sample_id} differently")
            rows.setdefault(key, row)
    return list(rows.values())


def summarize(rows: list[Row]) -> dict:
    """Accuracy per configuration (method × budget × mode × chunk frames × cap × slack): overall, per
    family, per needle bucket (and how many samples each bucket holds); mean KV bytes (after the
    prefill, and at its peak); the mean visual tokens into the language model and prefill seconds;
    and whether every uncapped method at budget 1 (under a reduction: one that keeps every token)
    answered exactly as ``full`` with the same chunking (same predictions). A configuration under a
    reduction is its own method (``evs@25%+das``)."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.config_key].append(row)

    def accuracy(items: list[Row]) -> float:
        return sum(r.correct for r in items) / len(items) if items else float("nan")

    configs = []
    for (method, budget, mode, chunk_frames, cap, slack), items in sorted(groups.items()):
        families: dict[str, list[Row]] = defaultdict(list)
        buckets: dict[str, list[Row]] = defaultdict(list)
        for r in items:
            families[r.family].append(r)
            if bucket(r.needle):
                buckets[bucket(r.needle)].append(r)
        configs.append(
            {
                "method": method,
                "budget": budget,
                "mode": mode,
                "chunk_frames": chunk_frames,
                "max_visual_tokens": cap,
                "prefill_slack": slack,
                "samples": len(items),
                "accuracy": accuracy(items),
                "families": {f: accuracy(v) for f, v in sorted(families.items())},
                "needle_buckets": {b: accuracy(buckets[b]) for b in BUCKETS if buckets[b]},
                "needle_bucket_samples": {b: len(buckets[b]) for b in BUCKETS if buckets[b]},
                "kv_bytes": sum(r.kv_bytes for r in items) / len(items),
                "peak_kv_bytes": sum(r.peak_kv_bytes for r in items) / len(items),
                "evidence_kept": mean_of([r.evidence_kept for r in items if r.evidence_kept is not None]),
                "reduction": items[0].reduction,
                "retention": items[0].retention,
                "llm_visual_tokens": sum(r.llm_visual_tokens for r in items) / len(items),
                "prefill_s": sum(r.prefill_s for r in items) / len(items),
                "prefill_total_s": sum(r.prefill_total_s for r in items) / len(items),
            }
        )
    reference = {(r.sample_id, r.mode, r.chunk_frames): r.prediction for r in rows if r.method == "full"}
    at_full_budget = [
        r
        for r in rows
        if r.budget == 1.0
        and r.retention == 1.0
        and r.method != "full"
        and not r.max_visual_tokens
        and (r.sample_id, r.mode, r.chunk_frames) in reference
    ]
    equal = all(r.prediction == reference[(r.sample_id, r.mode, r.chunk_frames)] for r in at_full_budget)
    return {"configs": configs, "keep_all_equals_full": equal if at_full_budget else None}


def mean_of(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def varied(configs: list[dict]) -> tuple[bool, bool, bool]:
    """Whether the configurations use more than one chunk size, more than one cap, more than one
    prefill slack (among chunked configurations)."""
    return (
        len({c.get("chunk_frames", 0) for c in configs}) > 1,
        len({c.get("max_visual_tokens", 0) for c in configs}) > 1,
        len({c.get("prefill_slack", 0) for c in configs if c.get("chunk_frames", 0)}) > 1,
    )


def markdown(summary: dict) -> str:
    """One row per configuration; the chunk and cap columns (and the peak KV bytes) only when
    more than one value of them is in the table; the mean visual tokens into the language model and
    prefill seconds (its forwards; the whole prefill) only when a configuration has a reduction."""
    configs = summary["configs"]
    families = sorted({f for c in configs for f in c["families"]})
    chunked, capped, slacked = varied(configs)
    extra = (["chunk frames"] if chunked else []) + (["cap"] if capped else []) + (["slack"] if slacked else [])
    peak = ["peak KV bytes"] if chunked or capped else []
    recall = ["evidence kept"] if any(c.get("evidence_kept") is not None for c in configs) else []
    reduced = ["LLM visual tokens", "LLM prefill s", "prefill s"] if any(c.get("reduction") for c in configs) else []
    header = ["method", "budget", "mode", *extra, "n", "accuracy", *recall, *families, *BUCKETS, "KV bytes", *peak]
    header += reduced
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for c in configs:
        fam = " | ".join(f"{c['families'].get(f, float('nan')):.2f}" for f in families)
        buc = " | ".join(f"{c['needle_buckets'].get(b, float('nan')):.2f}" for b in BUCKETS)
        columns = (
            ([str(c.get("chunk_frames", 0))] if chunked else [])
            + ([str(c.get("max_visual_tokens", 0) or "—")] if capped else [])
            + ([f"{c['prefill_slack']:g}" if c.get("prefill_slack") else "—"] if slacked else [])
        )
        lead = "".join(f"{value} | " for value in columns)
        kept = c.get("evidence_kept")
        shown = (f"{kept:.2f} | " if kept is not None else "— | ") if recall else ""
        tail = f" {c.get('peak_kv_bytes', 0) / 1024:.0f} KiB |" if peak else ""
        if reduced:
            seconds = f"{c.get('prefill_s', 0):.3f} | {c.get('prefill_total_s', 0):.3f}"
            tail += f" {c.get('llm_visual_tokens', 0):.0f} | {seconds} |"
        lines.append(
            f"| {c['method']} | {c['budget']:.0%} | {c['mode']} | {lead}{c['samples']} | {c['accuracy']:.3f} | "
            f"{shown}{fam} | {buc} | {c['kv_bytes'] / 1024:.0f} KiB |{tail}"
        )
    held = {
        tuple(c["needle_bucket_samples"].get(b, 0) for b in BUCKETS) for c in configs if "needle_bucket_samples" in c
    }
    if held:
        counts = "; ".join(" / ".join(map(str, h)) for h in sorted(held))
        lines.append(f"\nSamples per needle quartile ({', '.join(BUCKETS)}): {counts}")
    if summary["keep_all_equals_full"] is not None:
        lines.append(f"\nAt 100% every method answers exactly as `full`: **{summary['keep_all_equals_full']}**")
    ranked = ranking(summary, BUCKETS)
    if ranked:
        lines.append("\n## Methods between the bounds\n\n" + ranked.rstrip("\n"))
    return "\n".join(lines) + "\n"


def plot(summary: dict, out: Path, myopia_budget: float = 0.2) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for mode in sorted({c["mode"] for c in summary["configs"]}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
        for axes in (left, right):  # more methods than the default 10-colour cycle
            axes.set_prop_cycle(color=plt.cm.tab20.colors)
        chunked, capped, slacked = varied(summary["configs"])
        by_method: dict[str, list[dict]] = defaultdict(list)
        for c in summary["configs"]:
            if c["mode"] == mode:
                name = c["method"]
                if chunked:
                    name += f" chunk {c.get('chunk_frames', 0)}" if c.get("chunk_frames", 0) else " one-shot"
                if slacked and c.get("prefill_slack", 0):
                    name += f" slack {c['prefill_slack']:g}"
                if capped and c.get("max_visual_tokens", 0):
                    name += f" cap {c['max_visual_tokens']}"
                by_method[name].append(c)
        for method, items in sorted(by_method.items()):
            items.sort(key=kept_share)
            width = 2.8 if method.split()[0] == "das" else 1.4  # the method under study stands out
            shares, accuracies = [kept_share(c) for c in items], [c["accuracy"] for c in items]
            left.plot(shares, accuracies, marker="o", lw=width, label=method)
            at = [c for c in items if abs(kept_share(c) - myopia_budget) < 1e-9] or [
                c for c in items if kept_share(c) == 1.0
            ]
            if at and at[0]["needle_buckets"]:
                right.plot(
                    list(at[0]["needle_buckets"]),
                    list(at[0]["needle_buckets"].values()),
                    marker="o",
                    lw=width,
                    label=f"{method} @ {kept_share(at[0]):.0%}",
                )
        xlabel = "fraction of the video's visual tokens kept (budget × retention)"
        left.set(title=f"accuracy vs budget ({mode})", xlabel=xlabel, ylabel="accuracy")
        left.set_xscale("log")
        left.legend(fontsize=8)
        right.set(
            title=f"accuracy vs needle position at {myopia_budget:.0%} ({mode})",
            xlabel="where the evidence is in the video",
            ylabel="accuracy",
        )
        right.legend(fontsize=8)
        path = out / f"accuracy_{mode}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def configurations(
    methods: str,
    variants: list[str],
    budgets: str,
    modes: str,
    chunk_frames: str = "0",
    max_visual_tokens: str = "0",
    prefill_slack: str = "",
    reductions: str = "none",
) -> list[Config]:
    """Every (method or variant) × budget × mode × chunk frames × cap × slack × reduction
    (:func:`parse_reductions`); ``full`` at budget 1 whatever the budgets (the reference), never
    capped, and with the first slack only (it keeps everything); a cap only for methods that
    compress progressively (the others cannot hold one); a slack only for chunked configurations
    (default: the worker's); ``all`` = every registered method."""
    from videoqa.worker.model.chunks import Chunking
    from videoqa.worker.pruning.registry import METHODS, describe_methods

    names = [m for m in methods.split(",") if m]
    if names == ["all"]:
        names = [d.name for d in describe_methods()]
    else:
        describe_methods()  # registers the built-in methods
    entries = [(name, name, ()) for name in names] + [parse_variant(v) for v in variants]
    chunks = [_count(c, "--chunk-frames") for c in chunk_frames.split(",")]
    caps = [_count(c, "--max-visual-tokens") for c in max_visual_tokens.split(",")]
    slacks = [float(v) for v in prefill_slack.split(",") if v] or [Chunking().slack]
    if any(not v >= 1 for v in slacks):
        raise ValueError(f"--prefill-slack: {prefill_slack!r}: every slack must be at least 1")
    before_llm = parse_reductions(reductions)
    configs = []
    fractions = [float(b) for b in budgets.split(",")]
    for name, method, params in entries:
        progressive = (method in METHODS and METHODS[method].progressive and method != "full") or method == ORACLE
        for budget in [1.0] if method == "full" else fractions:
            for mode in modes.split(","):
                for chunk in chunks:
                    for cap in caps:
                        if cap and not progressive:
                            continue
                        for slack in slacks[:1] if method == "full" else slacks:
                            configs.append(
                                Config(method, budget, mode, params, name, chunk, cap, slack if chunk else 0.0)
                            )
                            if not chunk:
                                break
    return [replace(c, reduction=name, retention=retention) for c in configs for name, retention in before_llm]


def _count(text: str, flag: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{flag}: {value} is negative (0: none)")
    return value


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "eval":
        args = args[1:]
    parser = argparse.ArgumentParser(prog="videoqa eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="videoqa-demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument(
        "--frames", help="frame counts, comma separated (default: 16,64 for suite v2, 8,16 for v1; v2 needs 16 or more)"
    )
    parser.add_argument(
        "--suite",
        default="v2",
        choices=["v1", "v2"],
        help="the synthetic suite: v1 (one object per frame) or v2 (shots with the redundancy of real video, "
        "evidence known: the oracle configuration needs it)",
    )
    parser.add_argument(
        "--families",
        default="",
        help="question families of the synthetic suite, comma separated (default: its content families; "
        "suite v2 also has time_at,time_when for models that read frame times)",
    )
    parser.add_argument("--milebench", type=Path, help="a MileBench-format data root instead of the synthetic suite")
    parser.add_argument("--datasets", default="", help="MileBench datasets (comma separated; default all)")
    parser.add_argument(
        "--methods",
        default="full,das,snapkv,h2o,fastv",
        help="comma separated, or 'all' (every registered method); 'oracle' (suite v2) keeps the evidence",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=METHOD:key=value,...",
        help="an extra configuration of a method with its own parameters (repeatable)",
    )
    parser.add_argument("--budgets", default="1,0.5,0.2,0.1")
    parser.add_argument("--modes", default="aware,agnostic", help=f"comma separated: {', '.join(MODES)}")
    parser.add_argument(
        "--chunk-frames",
        default="0",
        help="frames per prefill chunk, comma separated (0: the whole video in one forward, the one-shot path)",
    )
    parser.add_argument(
        "--max-visual-tokens",
        default="0",
        help="caps on the visual entries a layer keeps, comma separated (0: none; progressive methods only)",
    )
    parser.add_argument(
        "--prefill-slack",
        default="",
        help="between chunks a progressive method keeps this many times its budget, comma separated "
        "(default: the worker's default)",
    )
    parser.add_argument(
        "--reductions",
        default="none",
        metavar="NAME:RETENTION,...",
        help="reductions of the visual tokens before the language model, comma separated: none, or a "
        "reduction method and the share of the tokens it keeps (e.g. none,evs:0.25,vidcom2:0.5); every "
        "configuration runs under each, its budget a fraction of the tokens the language model sees",
    )
    parser.add_argument("--first-question", default=FIRST_QUESTION, help="the first turn of followup mode")
    parser.add_argument(
        "--leave-out-heads",
        default="",
        metavar="LAYER:HEAD,...",
        help="also run every scoring method without these heads' statistics (e.g. the demo model's "
        "supervised head, 1:0), as a variant named METHOD-without-LxHy",
    )
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("eval"))
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="report on earlier runs' results.json (or their --out folders) instead of running",
    )
    opts = parser.parse_args(args)
    rows = merge(opts.merge) if opts.merge else run(opts)
    summary = summarize(rows)
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(
        json.dumps({"summary": summary, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    table = markdown(summary)
    (opts.out / "results.md").write_text(table)
    for path in plot(summary, opts.out):
        print(f"wrote {path}", file=sys.stderr)
    print(table)
    return 0


def run(opts: argparse.Namespace) -> list[Row]:
    """Answer the chosen samples under the chosen configurations (the work of ``videoqa eval``)."""
    from videoqa.worker.model.loader import load_model

    if opts.milebench:
        from videoqa.lab.milebench import load

        samples = load(opts.milebench, [d for d in opts.datasets.split(",") if d] or None, opts.count)
    else:
        from videoqa.lab import suite, suite_v2

        generate = suite_v2.generate if opts.suite == "v2" else suite.generate
        known = suite_v2.ALL_FAMILIES if opts.suite == "v2" else suite.FAMILIES
        kwargs = {}
        if opts.families:
            kwargs["families"] = tuple(f for f in opts.families.split(",") if f)
            unknown = [f for f in kwargs["families"] if f not in known]
            if unknown or not kwargs["families"]:
                raise SystemExit(f"--families: unknown {', '.join(unknown)}; suite {opts.suite} has {', '.join(known)}")
        if opts.frames:
            kwargs["frames"] = tuple(int(f) for f in opts.frames.split(","))
        samples = generate(opts.split, opts.count, **kwargs)  # without --frames: the suite's own counts
    configs = configurations(
        opts.methods,
        opts.variant,
        opts.budgets,
        opts.modes,
        opts.chunk_frames,
        opts.max_visual_tokens,
        opts.prefill_slack,
        opts.reductions,
    )
    if opts.leave_out_heads:
        configs += without_heads(configs, opts.leave_out_heads)
    lm = load_model(opts.model, device=opts.device)
    rows = evaluate(
        lm,
        samples,
        configs,
        max_new_tokens=opts.max_new_tokens,
        first_question=opts.first_question,
        progress=lambda i, n: print(f"\r{i}/{n} samples", end="", file=sys.stderr, flush=True),
    )
    print(file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(main())
