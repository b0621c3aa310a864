"""How the supervised head counts: its attention mass on the counted scenes, per count.

For suite v2 counting questions, the demo model's supervised head (head 0 of ``--layer``) is
trained to put n / (n + K) of its attention, from the position that answers, on the tokens of the
n counted scenes. This reads that mass back on a trained model, per count, with the number of
evidence tokens, how often the mass is nearer its own count's target than any other count's (the
share a reader of the mass alone would count right), and the correlation of mass with the number
of tokens within one count (none where every counted scene is the same size):

    python -m videoqa.lab.count_mass --model models/demo-v2 --count 30 --frames 16,64
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import torch

from videoqa.worker.model import tv_shim  # noqa: F401  (before transformers: torchvision on a CPU torch)


@dataclass(frozen=True)
class Reading:
    """One counting question: its frame count, the answer ``n``, the evidence tokens, the head's
    mass on them and the share it was trained toward."""

    frames: int
    n: int
    tokens: int
    mass: float
    target: float


def read(model, processor, seeds: list[int], frames: int, layer: int = 1, sink: float = 4.0) -> list[Reading]:
    """The supervised head's mass on the evidence of the counting question of each seed, for a
    model loaded with transformers (its attention is routed through the training attention for
    the reading and set back to plain sdpa after)."""
    from videoqa.lab import curriculum_v2
    from videoqa.lab.suite_v2 import build
    from videoqa.lab.train import collate, unwatch, watch_layers
    from videoqa.worker.model.families import adapter_for

    adapter = adapter_for(model, processor)
    (watched,) = watch_layers(model, [layer])
    readings = []
    try:
        for seed in seeds:
            example = curriculum_v2.example(adapter, "counting", seed, frames, curriculum_v2.SIZE, 1, sink)
            (evidence,) = example.evidence
            with torch.no_grad():
                model(**collate([example], processor.tokenizer.pad_token_id))
            mass = float(watched.videoqa_head0[0, evidence.position, evidence.tokens].sum())
            n = int(build("counting", seed, frames)[1].answer)
            readings.append(Reading(frames, n, len(evidence.tokens), mass, evidence.share))
    finally:
        unwatch(model, [watched])
    return readings


def correlation(a: list[float], b: list[float]) -> str:
    if len(a) < 3 or statistics.pstdev(a) == 0 or statistics.pstdev(b) == 0:
        return "–"
    return f"{statistics.correlation(a, b):.2f}"


def table(readings: list[Reading]) -> str:
    lines = [
        "| counted scenes n | target share | mass: mean (min-max) | evidence tokens | nearest its target "
        "| corr(mass, tokens) within n (questions) |",
        "|---|---|---|---|---|---|",
    ]
    targets = {r.n: r.target for r in readings}
    for n in sorted(targets):
        group = [r for r in readings if r.n == n]
        mass = [r.mass for r in group]
        tokens = [r.tokens for r in group]
        nearest = sum(min(targets, key=lambda k: abs(targets[k] - r.mass)) == n for r in group) / len(group)
        lines.append(
            f"| {n} | {group[0].target:.2f} | {statistics.mean(mass):.2f} ({min(mass):.2f}-{max(mass):.2f}) | "
            f"{min(tokens)}-{max(tokens)} | {nearest:.2f} | {correlation(mass, [float(t) for t in tokens])} "
            f"({len(group)}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videoqa.lab.suite import SPLITS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a demo model v2 directory (save_pretrained)")
    parser.add_argument("--split", default="test", choices=list(SPLITS))
    parser.add_argument("--offset", type=int, default=1000, help="first seed within the split (past the grid's)")
    parser.add_argument("--count", type=int, default=30, help="questions per frame count")
    parser.add_argument("--frames", default="16,64")
    parser.add_argument("--layer", type=int, default=1)
    args = parser.parse_args(argv)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    seeds = [SPLITS[args.split] + args.offset + i for i in range(args.count)]
    readings = [r for f in args.frames.split(",") for r in read(model, processor, seeds, int(f), args.layer)]
    print(table(readings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
