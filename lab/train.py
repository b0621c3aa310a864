"""Train the demo video-QA model on the synthetic suite (deterministic; CPU or GPU).

    # videoqa-demo 0.5.0, the embedded default (suite v2, Qwen3-VL architecture; two threads, as trained:
    # 41 minutes on a 2-core CPU)
    OMP_NUM_THREADS=2 python -m videoqa.lab.train --suite v2 --vision-steps 300 --steps 3400 \
        --frames 16,16,32,64 --batch-frames 128 --eval-every 850 --eval-count 60 \
        --oversample counting=3 --hide 0.5 --count-weight 4 --order-first --seed 1 --out models/videoqa-demo
    # 0.4.0 (commit dd15f6f): the same recipe on one thread
    # 0.3.0 (commit fc14307): --oversample counting=2, without --order-first, seed 0, two threads
    # 0.2.0 (commit b1e6014): 0.3.0's without --hide and --count-weight
    # the first demo model, 0.1.0 (suite v1, Qwen2-VL architecture)
    python -m videoqa.lab.train --out models/videoqa-demo-v1

A Qwen2-VL- (``--suite v1``) or Qwen3-VL-architecture (``--suite v2``) model is built from a config
(library initialisation) and trained in two stages, both on the suite's train split:

1. **Vision warm-up** (``--vision-steps``): the vision tower alone, with a linear probe that reads
   from each merged token the colour and shape of the object under it (or "no object"), as a
   detector head would.
   Trained end to end from the start, a from-scratch tower gets almost no gradient once the language
   model has learned each question's answer prior, and never learns shapes; this stage fixes that.
2. **Question answering** (``--steps``): the whole model, teacher forced on question-aware prompts
   (loss on the answer and the end-of-turn token), in padded batches, with the probe loss kept as an
   auxiliary term (``--probe-weight``) so the tower keeps encoding what the questions ask about.

The probe is dropped afterwards: the checkpoint (weights, processor, tokenizer) is a plain
Qwen2-VL or Qwen3-VL model written with ``save_pretrained``, loading through the normal model path (``--model DIR``).
Greedy validation accuracy per family is logged as it trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videoqa.lab.sample import Sample, is_correct
from videoqa.lab.suite import (
    COLORS,
    FAMILIES,
    SHAPES,
    SPLITS,
    Item,
    Scene,
    build,
    questions_about,
    render,
)
from videoqa.worker.model import tiny
from videoqa.worker.model.families import adapter_for
from videoqa.worker.types import DecodedMedia, GenerationParams, MediaKind

#: 56×56 frames (any upload is resized to that area): 2×2 merged tokens per pair of frames.
SPEC = tiny.TinySpec(
    "qwen2_vl",
    layers=4,
    hidden=192,
    heads=6,
    kv_heads=2,
    image_size=56,
    intermediate=576,
    vision_hidden=128,
    vision_depth=4,
)
COLOR_NAMES = list(COLORS)


def media_of(scene: Scene, seed: int, size: int) -> DecodedMedia:
    return DecodedMedia.from_array(render(scene, size, seed), fps=4.0)


@dataclass(frozen=True)
class Grid:
    """How the vision tower lays a video out: ``groups`` frame groups of ``frames`` frames each
    (Qwen's temporal patch), each ``rows`` × ``columns`` merged tokens, in that order."""

    groups: int
    frames: int
    rows: int
    columns: int

    @classmethod
    def of(cls, model, inputs: dict[str, torch.Tensor]) -> Grid:
        vision = model.config.vision_config
        t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
        return cls(t, vision.temporal_patch_size, h // vision.spatial_merge_size, w // vision.spatial_merge_size)

    @property
    def per_group(self) -> int:
        return self.rows * self.columns

    def cell(self, item: Item) -> int:
        """The merged token (within its group) whose region holds the item's centre."""
        row = min(int(item.y * self.rows), self.rows - 1)
        return row * self.columns + min(int(item.x * self.columns), self.columns - 1)


@dataclass(frozen=True)
class Evidence:
    """Where one question's answer should be read: from ``position`` (the token that predicts
    the answer), the visual ``tokens`` that show it. ``share`` None: all of the supervised head's
    attention belongs there; a number (counting): that share belongs there and the rest on the
    first token (an attention sink), so that the share, n / (n + K) for n frames, carries the count."""

    position: int
    tokens: list[int]
    share: float | None = None
    #: The tokens the answer needs in view (:func:`hide_visual` never hides them); None: ``tokens``.
    needed: list[int] | None = None


@dataclass
class Example:
    """One tokenised training conversation: its ids, which of them are supervised (the answers and
    the end-of-turn token after each), the processor output, the probe's per-token targets, and
    per question where its evidence is."""

    inputs: dict[str, torch.Tensor]
    ids: list[int]
    supervised: list[bool]
    targets: tuple[torch.Tensor, torch.Tensor]
    evidence: list[Evidence]
    #: Rotary positions [3, len(ids)]: the prompt's as served, then the conversation's text.
    positions: torch.Tensor
    #: The prompt's frame spans (half-open token index ranges of the visual tokens).
    spans: list[tuple[int, int]]
    #: Visual token indices the text after the video does not see (a pruned cache); empty: none.
    hidden: tuple[int, ...] = ()

    @property
    def visual(self) -> list[int]:
        """Token indices of every visual token, in prompt order."""
        return [i for start, end in self.spans for i in range(start, end)]

    @property
    def video_end(self) -> int:
        """The index after the last visual token: from there on the text reads a pruned cache."""
        return self.spans[-1][1]


def example(
    adapter,
    family: str,
    seed: int,
    frames: int,
    size: int,
    turns: int,
    count_sink: float = 0.0,
    order_first: bool = False,
) -> Example:
    """A video of ``family`` and a conversation about it: a question of that family first, then up
    to ``turns - 1`` other questions the same video answers (more supervised tokens per video).
    ``count_sink`` > 0: counting questions supervise the attention share n / (n + count_sink) on
    their n frames' tokens; 0: counting questions leave the attention free. ``order_first`` is
    suite v2's (:func:`videoqa.lab.curriculum_v2.example`); suite v1 refuses it."""
    if order_first:
        raise ValueError("--order-first is for suite v2")
    scene, question, *_ = build(family, seed, frames)
    rng = random.Random(seed)
    questions = questions_about(scene, rng)
    first = next((q for q in questions if q.text == question), None) or next(q for q in questions if q.family == family)
    others = [q for q in questions if q is not first]
    rng.shuffle(others)
    conversation = [first, *others[: turns - 1]]
    prompt = adapter.prepare(media_of(scene, seed, size), first.text)
    grid = Grid.of(adapter.model, prompt.inputs)
    spans = prompt.layout.frame_spans
    ids, supervised = list(prompt.input_ids), [False] * len(prompt.input_ids)
    evidence = []
    end = adapter.tokenizer.eos_token_id
    for turn, item in enumerate(conversation):
        tokens = sorted({spans[f // grid.frames][0] + grid.cell(scene[f]) for f in item.evidence})
        if item.family != "counting":
            evidence.append(Evidence(len(ids) - 1, tokens))
        elif count_sink > 0:
            evidence.append(Evidence(len(ids) - 1, tokens, len(item.evidence) / (len(item.evidence) + count_sink)))
        reply_ids = adapter.encode_text(item.answer)
        ids += reply_ids
        supervised += [True] * len(reply_ids)
        following = [end]
        if turn + 1 < len(conversation):
            following = adapter.encode_text(adapter.followup_text(conversation[turn + 1].text))
            assert following[0] == end, "the follow-up text starts by closing the answer"
        ids += following
        supervised += [True] + [False] * (len(following) - 1)
    continued = adapter.text_positions(len(prompt.input_ids), len(ids) - len(prompt.input_ids), prompt.rope_delta)
    positions = torch.cat([prompt.position_ids, continued], dim=-1)[:, 0]
    return Example(prompt.inputs, ids, supervised, probe_targets(scene, grid), evidence, positions, spans)


def probe_targets(scene: Scene, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class per merged token and frame of its group, [groups * rows * columns,
    frames] each, in the tower's token order: the object whose centre lies in the token's region,
    or the extra class (no object there; distractor frames have none)."""
    colors = torch.full((grid.groups * grid.per_group, grid.frames), len(COLOR_NAMES))
    shapes = torch.full((grid.groups * grid.per_group, grid.frames), len(SHAPES))
    for index, item in enumerate(scene):
        if item is not None:
            token = (index // grid.frames) * grid.per_group + grid.cell(item)
            colors[token, index % grid.frames] = COLOR_NAMES.index(item.color)
            shapes[token, index % grid.frames] = SHAPES.index(item.shape)
    return colors, shapes


def hide_visual(example: Example, keep: float, rng: random.Random) -> Example:
    """``example`` with its text after the video reading only a ``keep`` share of the visual
    tokens, as it would from a pruned cache: every question's evidence stays visible, seeded random
    others fill the share (more when the evidence alone exceeds it); the rest are ``hidden``.

    What this teaches is that an answer does not depend on the tokens that do not show it being
    there. It says nothing about which tokens those are: the visual tokens see each other in full,
    so the prefill's attention, which pruning methods score with, is as without hiding."""
    visual = example.visual
    evidence = {t for ev in example.evidence for t in (ev.tokens if ev.needed is None else ev.needed)}
    others = [t for t in visual if t not in evidence]
    fill = max(0, round(keep * len(visual)) - len(evidence))
    kept = set(rng.sample(others, min(fill, len(others))))
    return dataclasses.replace(example, hidden=tuple(t for t in others if t not in kept))


def attention_masks(examples: list[Example], length: int) -> torch.Tensor:
    """Bool [B, 1, L, L] (True: may attend): causal, pads never attended, and each example's
    ``hidden`` tokens not attended from its ``video_end`` on."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    masks = causal.repeat(len(examples), 1, 1, 1)
    for row, e in enumerate(examples):
        masks[row, 0, :, len(e.ids) :] = False
        if e.hidden:
            masks[row, 0, e.video_end :, list(e.hidden)] = False
    return masks


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``/``labels``/``mm_token_type_ids`` [B, L] (labels -100 where
    not supervised), ``attention_mask`` [B, L] (padding), or [B, 1, L, L] (:func:`attention_masks`)
    where an example hides visual tokens, ``position_ids`` [3, B, L] (the served positions), pixels
    and grids concatenated in batch order."""
    length = max(len(e.ids) for e in examples)
    n = len(examples)
    ids = torch.full((n, length), pad_id)
    mask = torch.zeros(n, length, dtype=torch.long)
    labels = torch.full((n, length), -100)
    token_types = torch.zeros(n, length, dtype=torch.long)
    positions = torch.zeros(3, n, length, dtype=torch.long)
    for row, e in enumerate(examples):
        positions[:, row, : len(e.ids)] = e.positions
        sequence = torch.tensor(e.ids)
        ids[row, : len(e.ids)] = sequence
        mask[row, : len(e.ids)] = 1
        labels[row, : len(e.ids)] = torch.where(torch.tensor(e.supervised), sequence, -100)
        prompt_types = e.inputs["mm_token_type_ids"][0]
        token_types[row, : prompt_types.numel()] = prompt_types
    if any(e.hidden for e in examples):
        mask = attention_masks(examples, length)
    return dict(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        mm_token_type_ids=token_types,
        position_ids=positions,
        pixel_values_videos=torch.cat([e.inputs["pixel_values_videos"] for e in examples]),
        video_grid_thw=torch.cat([e.inputs["video_grid_thw"] for e in examples]),
    )


class TokenProbe(nn.Module):
    """Reads, from each merged visual token, the colour and shape of the object centred under it in
    each of its frames (an extra class: no object there), like a detector head on a ViT.

    ``forward(tokens [N, hidden])`` returns colour logits [N, F, colours+1] and shape logits
    [N, F, shapes+1], F = temporal patch size; targets come from :func:`probe_targets`."""

    def __init__(self, hidden: int, frames_per_group: int):
        super().__init__()
        self.frames = frames_per_group
        self.colors, self.shapes = len(COLOR_NAMES) + 1, len(SHAPES) + 1
        self.linear = nn.Linear(hidden, frames_per_group * (self.colors + self.shapes))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(tokens).view(tokens.shape[0], self.frames, -1)
        return logits[..., : self.colors], logits[..., self.colors :]

    def loss(self, tokens: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        color_logits, shape_logits = self(tokens)
        colors = torch.cat([c for c, _ in targets])
        shapes = torch.cat([s for _, s in targets])
        ce = nn.functional.cross_entropy
        return ce(color_logits.flatten(0, 1), colors.flatten()) + ce(shape_logits.flatten(0, 1), shapes.flatten())


class VisionCapture:
    """Keeps the vision tower's merged output tokens [N, hidden] of the latest forward."""

    def __init__(self, visual: nn.Module):
        self.tokens: torch.Tensor | None = None
        visual.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        pooled = output.pooler_output
        self.tokens = pooled if torch.is_tensor(pooled) else torch.cat(pooled)


@dataclass(frozen=True)
class Curriculum:
    """What a demo model trains on: its architecture, its suite's families and default frame counts
    and frame size, and how to make a training conversation, a validation question and its media."""

    spec: tiny.TinySpec
    families: tuple[str, ...]
    frames: str
    size: int
    #: ``example(adapter, family, seed, frames, size, turns, count_sink, order_first) -> Example``
    example: Callable[..., Example]
    #: ``question(family, seed, frames) -> (scene, question, answer, aliases)``
    question: Callable[[str, int, int], tuple[Any, str, str, list[str]]]
    #: ``media(scene, seed, size) -> DecodedMedia``
    media: Callable[[Any, int, int], DecodedMedia]


def _v1_question(family: str, seed: int, frames: int) -> tuple[Any, str, str, list[str]]:
    scene, question, answer, _, aliases = build(family, seed, frames)
    return scene, question, answer, aliases


def curricula() -> dict[str, Curriculum]:
    """``v1``: suite v1 on a Qwen2-VL-architecture model (56×56 frames, 2×2 tokens per pair);
    ``v2``: suite v2 on a Qwen3-VL-architecture model (128×128 frames, 4×4 tokens per pair)."""
    from videoqa.lab import curriculum_v2, suite_v2

    return {
        "v1": Curriculum(SPEC, FAMILIES, "8,16,32,64", 112, example, _v1_question, media_of),
        "v2": Curriculum(
            curriculum_v2.SPEC_V2,
            suite_v2.FAMILIES,
            "16,32,64",
            curriculum_v2.SIZE,
            curriculum_v2.example,
            curriculum_v2.question_of,
            curriculum_v2.media_of,
        ),
    }


@torch.no_grad()
def validate(
    model,
    processor,
    count: int,
    frames: tuple[int, ...],
    size: int,
    families: tuple[str, ...],
    curriculum: Curriculum | None = None,
) -> dict:
    """Greedy accuracy per family on the validation split (the service's prefill + decode path)."""
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.model.loader import LoadedModel

    model.eval()
    adapter = adapter_for(model, processor)
    lm = LoadedModel("training", model, processor, adapter, "training", torch.device("cpu"), torch.float32)
    gen = ModelRunner(lm)
    results: dict[str, list[bool]] = {f: [] for f in families}
    base = SPLITS["validation"]
    question_of = curriculum.question if curriculum is not None else _v1_question
    media = curriculum.media if curriculum is not None else media_of
    for i in range(count):
        family, length = families[i % len(families)], frames[(i // len(families)) % len(frames)]
        scene, question, answer, aliases = question_of(family, base + i, length)
        state, logits = gen.prefill(adapter.prepare(media(scene, base + i, size), question))
        text = processor.tokenizer.decode(
            list(gen.stream(state, logits, GenerationParams(6))), skip_special_tokens=True
        )
        sample = Sample("v", family, question, answer, MediaKind.VIDEO, b"", length, None, aliases)
        results[family].append(is_correct(text, sample))
    model.train()
    per_family = {f: sum(r) / len(r) for f, r in results.items() if r}
    return {"overall": sum(map(sum, results.values())) / count, **per_family}


#: The attention function training runs with: sdpa, except in the layers whose head 0 the
#: evidence loss supervises, which compute their probabilities explicitly and keep head 0's.
TRAINING_ATTENTION = "videoqa_train"


def training_attention(module, query, key, value, attention_mask, **kwargs):
    """sdpa, or for a module marked ``videoqa_watch`` the same attention computed explicitly, with
    head 0's probabilities [B, q, S] kept on ``module.videoqa_head0`` (the grad flows through them).
    ``query`` [B, H, q, D], ``key``/``value`` [B, H_kv, S, D], mask as sdpa gets it (bool or None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not getattr(module, "videoqa_watch", False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scaling = kwargs.get("scaling") or module.scaling
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    q_len, seq = logits.shape[-2:]
    allowed = attention_mask
    if allowed is None:
        allowed = torch.ones(q_len, seq, dtype=torch.bool, device=query.device).tril(seq - q_len)
    logits = logits.masked_fill(~allowed, float("-inf")) if allowed.dtype == torch.bool else logits + allowed
    probabilities = torch.softmax(logits.float(), dim=-1).to(query.dtype)
    module.videoqa_head0 = probabilities[:, 0]
    return torch.matmul(probabilities, value).transpose(1, 2).contiguous(), None


def watch_layers(model, layers: list[int]) -> list[nn.Module]:
    """Route the language model through :func:`training_attention` (vision: sdpa) and mark the
    attention modules of ``layers``; returns them (their ``videoqa_head0`` after each forward)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(TRAINING_ATTENTION, training_attention)
    AttentionMaskInterface.register(TRAINING_ATTENTION, sdpa_mask)
    model.set_attn_implementation({"text_config": TRAINING_ATTENTION, "vision_config": "sdpa"})
    watched = [model.model.language_model.layers[layer].self_attn for layer in layers]
    for module in watched:
        module.videoqa_watch = True
    return watched


def unwatch(model, watched: list[nn.Module]) -> None:
    """Undo :func:`watch_layers`: the marks and kept probabilities gone, plain sdpa again."""
    for module in watched:
        module.__dict__.pop("videoqa_head0", None)
        del module.videoqa_watch
    model.set_attn_implementation("sdpa")


def evidence_loss(heads: list[torch.Tensor], batch: list[Example], share_weight: float = 1.0) -> torch.Tensor:
    """Mean over questions and supervised heads of the evidence term; ``heads`` holds one head's
    attention probabilities [B, L, L] per supervised layer.

    A question with ``share`` None costs −log(mass the head, at the position that predicts the
    answer, puts on the evidence); one with a share t costs ``share_weight`` × KL((t, 1 − t) ‖
    (mass on the evidence, mass on the first token)): near its target a KL is a small quadratic,
    next to −log terms of 0.1 or more, so the weight is what holds the share tight. A grounding
    signal for one head per layer: it breaks the long plateau a from-scratch model sits on before
    it discovers where to look; the other heads stay free."""
    terms = []
    for probabilities in heads:
        for row, e in enumerate(batch):
            for ev in e.evidence:
                mass = probabilities[row, ev.position, ev.tokens].sum().clamp(min=1e-6)
                if ev.share is None:
                    terms.append(-torch.log(mass))
                    continue
                sink = probabilities[row, ev.position, 0].clamp(min=1e-6)
                t = ev.share
                terms.append(share_weight * (t * torch.log(t / mass) + (1 - t) * torch.log((1 - t) / sink)))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def widen_query_key(model: nn.Module, std: float) -> None:
    """Redraw the language model's query and key projections from N(0, std²).

    With the library's 0.02, attention logits start near zero and their gradient is a product of
    two tiny matrices: the model sits on each question's answer prior for thousands of steps
    before it learns where to look. A wider start shortens that plateau."""
    with torch.no_grad():
        for name, param in model.model.language_model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.normal_(0.0, std)


def family_weights(families: tuple[str, ...], oversample: str) -> list[float]:
    """How often each family's question is drawn, from ``family=weight,...`` (others: 1)."""
    weights = dict.fromkeys(families, 1.0)
    for item in filter(None, oversample.split(",")):
        family, _, weight = item.partition("=")
        if family not in weights:
            raise SystemExit(f"--oversample: {family!r} is not a trained family ({', '.join(families)})")
        try:
            weights[family] = float(weight)
        except ValueError:
            raise SystemExit(f"--oversample: {item!r} is not family=weight") from None
        if not 0 < weights[family] <= 100:
            raise SystemExit(f"--oversample: the weight of {family} must be in (0, 100]")
    return [weights[f] for f in families]


def parse_range(text: str, option: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` with 0 < LOW <= HIGH <= 1."""
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"{option}: {text!r} is not LOW,HIGH") from None
    if not 0 < low <= high <= 1:
        raise SystemExit(f"{option}: need 0 < LOW <= HIGH <= 1, got {text!r}")
    return low, high


def _format(accuracy: dict) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in accuracy.items())


def main(argv: list[str] | None = None) -> int:
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--suite", default="v1", choices=["v1", "v2"])
    curriculum = curricula()[first.parse_known_args(argv)[0].suite]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite",
        default="v1",
        choices=["v1", "v2"],
        help="v1: suite v1 on a Qwen2-VL-architecture model; v2: suite v2 on a Qwen3-VL-architecture model",
    )
    parser.add_argument("--out", type=Path, default=Path("models/videoqa-demo"))
    parser.add_argument("--vision-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=8, help="videos per question-answering batch")
    parser.add_argument(
        "--batch-frames",
        type=int,
        default=256,
        help="at most this many frames per batch: longer videos come in smaller batches (64 frames: 4)",
    )
    parser.add_argument("--frames", default=curriculum.frames, help="frame counts to train on (one per batch, cycled)")
    parser.add_argument("--size", type=int, default=curriculum.size)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--probe-weight", type=float, default=0.3)
    parser.add_argument("--turns", type=int, default=4, help="questions per training video (a multi-turn chat)")
    parser.add_argument("--attend-weight", type=float, default=0.5, help="weight of the evidence-attention loss")
    parser.add_argument("--attend-layers", default="1", help="layers whose head 0 learns to look at the evidence")
    parser.add_argument("--qk-init", type=float, default=0.1, help="std of the language model's query/key weights")
    parser.add_argument(
        "--count-sink",
        type=float,
        default=4.0,
        help="counting questions teach the evidence head the share n/(n+K) on their n frames (K; 0: leave it free)",
    )
    parser.add_argument(
        "--order-first",
        action="store_true",
        help="ordering questions teach the evidence head the first-shown shape's tokens only (suite v2)",
    )
    parser.add_argument(
        "--count-weight", type=float, default=1.0, help="weight of the counting share's term in the evidence loss"
    )
    parser.add_argument(
        "--hide",
        type=float,
        default=0.0,
        help="share of training conversations whose text reads a pruned cache (evidence kept, see hide_visual)",
    )
    parser.add_argument(
        "--hide-keep",
        default="0.05,0.5",
        help="LOW,HIGH: a hiding conversation keeps a share of the visual tokens drawn uniformly from this range",
    )
    parser.add_argument(
        "--oversample",
        default="",
        help="family=weight,...: draw these families that many times as often as the others (e.g. counting=2)",
    )
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--families", default=",".join(curriculum.families), help="question families to train and validate on"
    )
    args = parser.parse_args(argv)
    hide_keep = parse_range(args.hide_keep, "--hide-keep")
    if args.order_first and args.suite != "v2":
        raise SystemExit("--order-first is for suite v2 (suite v1's ordering head already looks at the earlier object)")
    if not 0 <= args.hide <= 1:
        raise SystemExit("--hide must be in [0, 1]")
    families = tuple(f for f in args.families.split(",") if f)
    weights = family_weights(families, args.oversample)
    frame_counts = tuple(int(f) for f in args.frames.split(","))
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, processor = tiny.build_from_spec(curriculum.spec, args.seed, wide_init=False)
    widen_query_key(model, args.qk_init)
    attend_layers = [int(x) for x in args.attend_layers.split(",") if x] if args.attend_weight > 0 else []
    watched = watch_layers(model, attend_layers)
    model.train()
    adapter = adapter_for(model, processor)
    vision_config = model.config.vision_config
    probe = TokenProbe(curriculum.spec.hidden, vision_config.temporal_patch_size)
    capture = VisionCapture(model.model.visual)
    started = time.time()

    sink = args.count_sink

    def draw(step: int, n: int, hide: float = 0.0) -> list[Example]:
        frames = frame_counts[step % len(frame_counts)]
        n = max(1, min(n, args.batch_frames * n // (args.batch * frames)))
        batch = [
            curriculum.example(
                adapter,
                family,
                rng.randrange(SPLITS["validation"]),
                frames,
                args.size,
                args.turns,
                sink,
                args.order_first,
            )
            for family in rng.choices(families, weights, k=n)
        ]
        if hide <= 0:
            return batch
        return [hide_visual(e, rng.uniform(*hide_keep), rng) if rng.random() < hide else e for e in batch]

    def optimise(params: list, lr: float, steps: int, loss_of, label: str) -> None:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.05)
        running: dict[str, float] = {}
        for step in range(1, steps + 1):
            losses = loss_of(step)
            sum(losses.values()).backward()
            for name, value in losses.items():
                running[name] = running.get(name, 0.0) + value.item()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 50 == 0:
                shown = " ".join(f"{k} {v / 50:.3f}" for k, v in running.items())
                print(f"{label} step {step} {shown} ({time.time() - started:.0f}s)", flush=True)
                running = {}
            if label == "qa" and (step % args.eval_every == 0 or step == steps):
                accuracy = validate(model, processor, args.eval_count, frame_counts, args.size, families, curriculum)
                print(f"qa step {step} validation {_format(accuracy)}", flush=True)

    def vision_loss(step: int) -> dict[str, torch.Tensor]:
        batch = draw(step, args.batch * 2)
        pixels = torch.cat([e.inputs["pixel_values_videos"] for e in batch])
        grids = torch.cat([e.inputs["video_grid_thw"] for e in batch])
        model.model.visual(pixels, grid_thw=grids)
        return {"probe": probe.loss(capture.tokens, [e.targets for e in batch])}

    def qa_loss(step: int) -> dict[str, torch.Tensor]:
        batch = draw(step, args.batch, args.hide)
        inputs = collate(batch, processor.tokenizer.pad_token_id)
        output = model(**inputs)
        probe_loss = probe.loss(capture.tokens, [e.targets for e in batch])
        losses = {"answer": output.loss, "probe": args.probe_weight * probe_loss}
        if watched:
            heads = [m.videoqa_head0 for m in watched]
            losses["attend"] = args.attend_weight * evidence_loss(heads, batch, args.count_weight)
        return losses

    if args.vision_steps:
        vision_params = [*model.model.visual.parameters(), *probe.parameters()]
        optimise(vision_params, args.vision_lr, args.vision_steps, vision_loss, "vision")
    if args.steps:
        optimise([*model.parameters(), *probe.parameters()], args.lr, args.steps, qa_loss, "qa")
    args.out.mkdir(parents=True, exist_ok=True)
    unwatch(model, watched)
    model.eval().save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"saved {args.out} after {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
