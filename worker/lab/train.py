"""Train a small video-QA model on the synthetic suite (deterministic; CPU or GPU).

    python -m videoqa.worker.lab.train --out models/videoqa-demo --steps 4000

Builds a Qwen2-VL-architecture model from a config (library initialisation), then trains it with
teacher forcing on the suite's train split (question-aware prompts; loss on the answer tokens and
the end-of-turn token only), logging the loss and the greedy validation accuracy as it goes. The
checkpoint (weights, processor, tokenizer) is written with ``save_pretrained`` and loads through
the normal model path (``--model models/videoqa-demo``).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from videoqa.worker.lab.sample import Sample, is_correct
from videoqa.worker.lab.suite import FAMILIES, SPLITS, build, render
from videoqa.worker.model import tiny
from videoqa.worker.model.families import adapter_for
from videoqa.worker.types import DecodedMedia, GenerationParams, MediaKind

SPEC = tiny.TinySpec(
    "qwen2_vl", layers=4, hidden=192, heads=6, kv_heads=2, intermediate=512, vision_hidden=128, vision_depth=4
)


def media_of(scene, seed: int, size: int) -> DecodedMedia:
    return DecodedMedia.from_array(render(scene, size, seed), fps=4.0)


def example(adapter, family: str, seed: int, frames: int, size: int):
    scene, question, answer, *_ = build(family, seed, frames)
    prompt = adapter.prepare(media_of(scene, seed, size), question)
    answer_ids = [*adapter.encode_text(answer), adapter.tokenizer.eos_token_id]
    inputs = dict(prompt.inputs)
    prompt_len = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros(1, len(answer_ids), dtype=inputs["mm_token_type_ids"].dtype)], dim=1
    )
    labels = inputs["input_ids"].clone()
    labels[:, :prompt_len] = -100
    return inputs, labels


@torch.no_grad()
def validate(model, processor, count: int, frames: int, size: int, families: tuple[str, ...] = FAMILIES) -> float:
    from videoqa.worker.model.generate import Generator
    from videoqa.worker.model.loader import LoadedModel

    model.eval()
    adapter = adapter_for(model, processor)
    lm = LoadedModel("training", model, processor, adapter, "training", torch.device("cpu"), torch.float32)
    gen = Generator(lm)
    right = 0
    base = SPLITS["validation"]
    for i in range(count):
        family = families[i % len(families)]
        scene, question, answer, _, aliases = build(family, base + i, frames)
        state, logits = gen.prefill(adapter.prepare(media_of(scene, base + i, size), question))
        text = processor.tokenizer.decode(
            list(gen.stream(state, logits, GenerationParams(4))), skip_special_tokens=True
        )
        right += is_correct(text, Sample("v", family, question, answer, MediaKind.VIDEO, b"", frames, None, aliases))
    model.train()
    return right / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/videoqa-demo"))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-count", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default=",".join(FAMILIES), help="question families to train and validate on")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    families = tuple(f for f in args.families.split(",") if f)
    model, processor = tiny.build_from_spec(SPEC, args.seed, wide_init=False)
    model.train()
    adapter = adapter_for(model, processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    started, running = time.time(), 0.0
    for step in range(1, args.steps + 1):
        for _ in range(args.accumulate):
            inputs, labels = example(
                adapter, rng.choice(FAMILIES), rng.randrange(SPLITS["validation"]), args.frames, args.size
            )
            loss = model(**inputs, labels=labels).loss / args.accumulate
            loss.backward()
            running += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            print(f"step {step} loss {running / 50:.3f} ({time.time() - started:.0f}s)", flush=True)
            running = 0.0
        if step % args.eval_every == 0 or step == args.steps:
            accuracy = validate(model, processor, args.eval_count, args.frames, args.size, families)
            print(f"step {step} validation accuracy {accuracy:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"saved {args.out} after {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
