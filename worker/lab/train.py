"""Train the demo video-QA model on the synthetic suite (deterministic; CPU or GPU).

    python -m videoqa.worker.lab.train --out models/videoqa-demo

A Qwen2-VL-architecture model is built from a config (library initialisation) and trained in two
stages, both on the suite's train split:

1. **Vision warm-up** (``--vision-steps``): the vision tower alone, with a linear probe that reads
   from each merged token the colour and shape of the object under it (or "no object"), as a
   detector head would.
   Trained end to end from the start, a from-scratch tower gets almost no gradient once the language
   model has learned each question's answer prior, and never learns shapes; this stage fixes that.
2. **Question answering** (``--steps``): the whole model, teacher forced on question-aware prompts
   (loss on the answer and the end-of-turn token), in padded batches, with the probe loss kept as an
   auxiliary term (``--probe-weight``) so the tower keeps encoding what the questions ask about.

The probe is dropped afterwards: the checkpoint (weights, processor, tokenizer) is a plain Qwen2-VL
model written with ``save_pretrained``, loading through the normal model path (``--model DIR``).
Greedy validation accuracy per family is logged as it trains.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from videoqa.worker.lab.sample import Sample, is_correct
from videoqa.worker.lab.suite import (
    BACKGROUND,
    COLORS,
    FAMILIES,
    SHAPES,
    SPLITS,
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


@dataclass
class Example:
    """One tokenised training conversation: its ids, which of them are supervised (the answers and
    the end-of-turn token after each), the processor output, and the probe's per-token targets."""

    inputs: dict[str, torch.Tensor]
    ids: list[int]
    supervised: list[bool]
    targets: tuple[torch.Tensor, torch.Tensor]
    #: Per question: the position that predicts its answer, and the visual tokens of its evidence.
    evidence: list[tuple[int, list[int]]]


def example(adapter, probe, family: str, seed: int, frames: int, size: int, turns: int) -> Example:
    """A video of ``family`` and a conversation about it: a question of that family first, then up
    to ``turns - 1`` other questions the same video answers (more supervised tokens per video)."""
    scene, question, *_ = build(family, seed, frames)
    rng = random.Random(seed)
    questions = questions_about(scene, rng)
    first = next((q for q in questions if q.text == question), None) or next(q for q in questions if q.family == family)
    others = [q for q in questions if q is not first]
    rng.shuffle(others)
    conversation = [first, *others[: turns - 1]]
    pixels = render(scene, size, seed)
    prompt = adapter.prepare(DecodedMedia.from_array(pixels, fps=4.0), first.text)
    merge = adapter.model.config.vision_config.spatial_merge_size
    region = size // (int(prompt.inputs["video_grid_thw"][0, 2]) // merge)  # rendered pixels per merged token
    covered = probe.cover(pixels, region)  # [T, h*w]
    spans = prompt.layout.frame_spans
    ids, supervised = list(prompt.input_ids), [False] * len(prompt.input_ids)
    evidence = []
    end = adapter.tokenizer.eos_token_id
    for turn, item in enumerate(conversation):
        tokens = []
        for frame in item.evidence:
            start, stop = spans[frame // probe.frames]
            hits = covered[frame].nonzero().flatten().tolist()
            tokens += [start + r for r in hits] if hits else list(range(start, stop))
        evidence.append((len(ids) - 1, sorted(set(tokens))))
        reply_ids = adapter.encode_text(item.answer)
        ids += reply_ids
        supervised += [True] * len(reply_ids)
        following = [end]
        if turn + 1 < len(conversation):
            following = adapter.encode_text(adapter.followup_text(conversation[turn + 1].text))
            assert following[0] == end, "the follow-up text starts by closing the answer"
        ids += following
        supervised += [True] + [False] * (len(following) - 1)
    return Example(prompt.inputs, ids, supervised, probe.targets(scene, pixels, region), evidence)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``/``attention_mask``/``labels``/``mm_token_type_ids`` [B, L]
    (labels -100 where not supervised), pixels and grids concatenated in batch order."""
    length = max(len(e.ids) for e in examples)
    n = len(examples)
    ids = torch.full((n, length), pad_id)
    mask = torch.zeros(n, length, dtype=torch.long)
    labels = torch.full((n, length), -100)
    token_types = torch.zeros(n, length, dtype=torch.long)
    for row, e in enumerate(examples):
        sequence = torch.tensor(e.ids)
        ids[row, : len(e.ids)] = sequence
        mask[row, : len(e.ids)] = 1
        labels[row, : len(e.ids)] = torch.where(torch.tensor(e.supervised), sequence, -100)
        prompt_types = e.inputs["mm_token_type_ids"][0]
        token_types[row, : prompt_types.numel()] = prompt_types
    return dict(
        input_ids=ids,
        attention_mask=mask,
        labels=labels,
        mm_token_type_ids=token_types,
        pixel_values_videos=torch.cat([e.inputs["pixel_values_videos"] for e in examples]),
        video_grid_thw=torch.cat([e.inputs["video_grid_thw"] for e in examples]),
    )


class TokenProbe(nn.Module):
    """Reads, from each merged visual token, the colour and shape of the object under it in each of
    its frames (an extra class: no object there), like a detector head on a ViT.

    ``forward(tokens [N, hidden])`` returns colour logits [N, F, colours+1] and shape logits
    [N, F, shapes+1], F = temporal patch size. Targets come from the rendered frames: a token's
    region shows the object in a frame when at least ``threshold`` of its pixels are the object's."""

    def __init__(self, hidden: int, frames_per_group: int, threshold: float = 0.1):
        super().__init__()
        self.frames, self.threshold = frames_per_group, threshold
        self.colors, self.shapes = len(COLOR_NAMES) + 1, len(SHAPES) + 1
        self.linear = nn.Linear(hidden, frames_per_group * (self.colors + self.shapes))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(tokens).view(tokens.shape[0], self.frames, -1)
        return logits[..., : self.colors], logits[..., self.colors :]

    def cover(self, frames: np.ndarray, region: int) -> torch.Tensor:
        """Which ``region``-pixel squares of each frame show the object, [T, rows * columns] bool
        (distractor frames: whatever their noise covers; their labels say "no object")."""
        count, height, width, _ = frames.shape
        covered = (np.abs(frames.astype(np.int16) - np.array(BACKGROUND)).sum(-1) > 30).astype(np.float32)
        squares = covered.reshape(count, height // region, region, width // region, region).mean((2, 4))
        return torch.from_numpy(squares.reshape(count, -1) >= self.threshold)

    def targets(self, scene: Scene, frames: np.ndarray, region: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour and shape class per merged token and frame, [N, F] each, in the tower's token
        order (frame groups, then rows, then columns of ``region``-pixel squares)."""
        count, height, width, _ = frames.shape
        cover = self.cover(frames, region).numpy().reshape(count, height // region, width // region)
        colors = np.full(cover.shape, len(COLOR_NAMES))
        shapes = np.full(cover.shape, len(SHAPES))
        for index, item in enumerate(scene):
            if item is not None:
                colors[index][cover[index]] = COLOR_NAMES.index(item.color)
                shapes[index][cover[index]] = SHAPES.index(item.shape)

        def arrange(labels: np.ndarray) -> torch.Tensor:  # [T, h, w] -> [T/F * h * w, F]
            grouped = labels.reshape(count // self.frames, self.frames, -1).transpose(0, 2, 1)
            return torch.from_numpy(grouped.reshape(-1, self.frames).copy())

        return arrange(colors), arrange(shapes)

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


@torch.no_grad()
def validate(model, processor, count: int, frames: tuple[int, ...], size: int, families: tuple[str, ...]) -> dict:
    """Greedy accuracy per family on the validation split (the service's prefill + decode path)."""
    from videoqa.worker.model.generate import Generator
    from videoqa.worker.model.loader import LoadedModel

    model.eval()
    adapter = adapter_for(model, processor)
    gen = Generator(LoadedModel("training", model, processor, adapter, "training", torch.device("cpu"), torch.float32))
    results: dict[str, list[bool]] = {f: [] for f in families}
    base = SPLITS["validation"]
    for i in range(count):
        family, length = families[i % len(families)], frames[(i // len(families)) % len(frames)]
        scene, question, answer, _, aliases = build(family, base + i, length)
        state, logits = gen.prefill(adapter.prepare(media_of(scene, base + i, size), question))
        text = processor.tokenizer.decode(
            list(gen.stream(state, logits, GenerationParams(6))), skip_special_tokens=True
        )
        sample = Sample("v", family, question, answer, MediaKind.VIDEO, b"", length, None, aliases)
        results[family].append(is_correct(text, sample))
    model.train()
    per_family = {f: sum(r) / len(r) for f, r in results.items() if r}
    return {"overall": sum(map(sum, results.values())) / count, **per_family}


def evidence_loss(attentions: tuple[torch.Tensor, ...], batch: list[Example], layers: list[int]) -> torch.Tensor:
    """Mean over questions and ``layers`` of −log(attention mass that head 0, at the position that
    predicts the answer, puts on the evidence's visual tokens); ``attentions[l]`` is [B, H, L, L].

    A grounding signal for one head per layer: it breaks the long plateau a from-scratch model
    sits on before it discovers where to look; the other heads stay free."""
    terms = []
    for layer in layers:
        probabilities = attentions[layer][:, 0]
        for row, e in enumerate(batch):
            for position, tokens in e.evidence:
                mass = probabilities[row, position, tokens].sum()
                terms.append(-torch.log(mass.clamp(min=1e-6)))
    return torch.stack(terms).mean()


def widen_query_key(model: nn.Module, std: float) -> None:
    """Redraw the language model's query and key projections from N(0, std²).

    With the library's 0.02, attention logits start near zero and their gradient is a product of
    two tiny matrices: the model sits on each question's answer prior for thousands of steps
    before it learns where to look. A wider start shortens that plateau."""
    with torch.no_grad():
        for name, param in model.model.language_model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.normal_(0.0, std)


def _format(accuracy: dict) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in accuracy.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/videoqa-demo"))
    parser.add_argument("--vision-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", default="8,16,32", help="frame counts to train on (one per batch, cycled)")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vision-lr", type=float, default=2e-3)
    parser.add_argument("--probe-weight", type=float, default=0.3)
    parser.add_argument("--turns", type=int, default=4, help="questions per training video (a multi-turn chat)")
    parser.add_argument("--attend-weight", type=float, default=0.5, help="weight of the evidence-attention loss")
    parser.add_argument("--attend-layers", default="1", help="layers whose head 0 learns to look at the evidence")
    parser.add_argument("--qk-init", type=float, default=0.1, help="std of the language model's query/key weights")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default=",".join(FAMILIES), help="question families to train and validate on")
    args = parser.parse_args(argv)
    families = tuple(f for f in args.families.split(",") if f)
    frame_counts = tuple(int(f) for f in args.frames.split(","))
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, processor = tiny.build_from_spec(SPEC, args.seed, wide_init=False)
    # The demo model uses transformers' own M-RoPE positions (text after a video starts max(h, w)
    # past it), in training and, through this config entry, when served (see model.families).
    model.config.videoqa_positions = "transformers"
    widen_query_key(model, args.qk_init)
    attend_layers = [int(x) for x in args.attend_layers.split(",") if x]
    if args.attend_weight > 0:
        model.set_attn_implementation("eager")  # attention probabilities for the evidence loss
    model.train()
    adapter = adapter_for(model, processor)
    vision_config = model.config.vision_config
    probe = TokenProbe(SPEC.hidden, vision_config.temporal_patch_size)
    capture = VisionCapture(model.model.visual)
    started = time.time()

    def draw(step: int, n: int) -> list[Example]:
        frames = frame_counts[step % len(frame_counts)]
        return [
            example(adapter, probe, family, rng.randrange(SPLITS["validation"]), frames, args.size, args.turns)
            for family in [rng.choice(families) for _ in range(n)]
        ]

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
                accuracy = validate(model, processor, args.eval_count, frame_counts, args.size, families)
                print(f"qa step {step} validation {_format(accuracy)}", flush=True)

    def vision_loss(step: int) -> dict[str, torch.Tensor]:
        batch = draw(step, args.batch * 2)
        pixels = torch.cat([e.inputs["pixel_values_videos"] for e in batch])
        grids = torch.cat([e.inputs["video_grid_thw"] for e in batch])
        model.model.visual(pixels, grid_thw=grids)
        return {"probe": probe.loss(capture.tokens, [e.targets for e in batch])}

    def qa_loss(step: int) -> dict[str, torch.Tensor]:
        batch = draw(step, args.batch)
        inputs = collate(batch, processor.tokenizer.pad_token_id)
        output = model(**inputs, output_attentions=args.attend_weight > 0)
        probe_loss = probe.loss(capture.tokens, [e.targets for e in batch])
        losses = {"answer": output.loss, "probe": args.probe_weight * probe_loss}
        if args.attend_weight > 0:
            losses["attend"] = args.attend_weight * evidence_loss(output.attentions, batch, attend_layers)
        return losses

    if args.vision_steps:
        vision_params = [*model.model.visual.parameters(), *probe.parameters()]
        optimise(vision_params, args.vision_lr, args.vision_steps, vision_loss, "vision")
    if args.steps:
        optimise([*model.parameters(), *probe.parameters()], args.lr, args.steps, qa_loss, "qa")
    args.out.mkdir(parents=True, exist_ok=True)
    model.set_attn_implementation("sdpa")
    model.eval().save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"saved {args.out} after {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
