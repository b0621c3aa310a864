"""Pruning overhead as a ratio to prefill time, measured side by side in one run.

For each frame count, the same prompt is prefilled without pruning (the reference) and with each
method (question-aware). A method's overhead is the time its attention statistics take inside
the prefill (timed by the recording itself, so no difference of two noisy prefill times) plus the
time of ``prune()`` (scoring, top-k, Recycling Bin, gather). Runs are interleaved and medians
taken.

    python bench/prune_overhead.py                       # tiny + small configs, 16/32/64 frames
    python bench/prune_overhead.py --quick               # a seconds-long smoke run
    python bench/prune_overhead.py --device cuda:0 --spec 28,3584,28,4,18944 --dtype bfloat16   # on a GPU

Writes JSON (``--json``) and a markdown table (``--markdown``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videoqa.worker.model import tiny
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.loader import load_model
from videoqa.worker.pruning.pipeline import PrunedPrefill
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.types import DecodedMedia, PruningSpec

METHODS = [
    "das",
    "snapkv",
    "h2o",
    "fastv",
    "pyramidkv",
    "csp",
    "look_m",
    "madakv",
    "hae",
    "retentive_kv",
    "streaming_llm",
    "random",
]
QUESTION = "What happens in the last frames of the video?"


def frames(count: int, size: int = 224) -> DecodedMedia:
    rng = np.random.RandomState(count)
    return DecodedMedia.from_array((rng.rand(count, size, size, 3) * 255).astype(np.uint8))


def register_spec(name: str, spec: tiny.TinySpec) -> str:
    tiny.TINY_MODELS[name] = spec
    return name


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(lm, count: int, methods: list[str], budget: float, reps: int) -> dict:
    gen = ModelRunner(lm)
    prompt = lm.adapter.prepare(frames(count), QUESTION)
    gen.prefill(prompt)  # warm-up
    base: list[float] = []
    record: dict[str, list[float]] = {m: [] for m in methods}
    prune: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(reps):
        base.append(timed(lambda: gen.prefill(prompt)))
        for name in methods:
            pipeline = PrunedPrefill(gen, build_method(PruningSpec(name, {}, budget)), question_aware=True)
            state, _ = pipeline.prefill(prompt)
            record[name].append(pipeline.record.seconds)  # the statistics' own time inside the prefill
            prune[name].append(timed(lambda p=pipeline, s=state: p.prune(s)))
    prefill = statistics.median(base)
    rows = {}
    for name in methods:
        stats_cost = statistics.median(record[name])
        apply_cost = statistics.median(prune[name])
        rows[name] = {
            "stats_seconds": stats_cost,
            "prune_seconds": apply_cost,
            "overhead_ratio": (stats_cost + apply_cost) / prefill,
        }
    return {
        "frames": count,
        "prompt_tokens": prompt.layout.prompt_length,
        "visual_tokens": prompt.layout.num_visual_tokens,
        "prefill_seconds": prefill,
        "methods": rows,
    }


def markdown(results: list[dict], budget: float) -> str:
    methods = list(results[0]["runs"][0]["methods"])
    lines = []
    for result in results:
        lines.append(
            f"\n**{result['model']}** ({result['description']}), budget {budget:.0%}, "
            f"device {result['device']}: overhead / prefill time\n"
        )
        lines.append("| frames | prompt tokens | prefill (s) | " + " | ".join(methods) + " |")
        lines.append("|---" * (3 + len(methods)) + "|")
        for run in result["runs"]:
            cells = [f"{run['methods'][m]['overhead_ratio'] * 100:.1f}%" for m in methods]
            lines.append(
                f"| {run['frames']} | {run['prompt_tokens']} | {run['prefill_seconds']:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="16,32,64")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--spec",
        action="append",
        default=None,
        help="extra family-sized config: layers,hidden,heads,kv_heads[,intermediate]",
    )
    parser.add_argument("--quick", action="store_true", help="4 frames, 1 repetition, tiny model only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    models = [("tiny-qwen2-vl", "2 layers, hidden 64, 4/2 heads")]
    # Qwen2-VL-2B's width at 2 layers: per-layer costs, hence the overhead ratio, do not depend on depth.
    specs = args.spec if args.spec is not None else ([] if args.quick else ["2,1536,12,2,8960"])
    for text in specs:
        spec = tiny.TinySpec.from_shape(text)
        name = register_spec(f"qwen2-vl-{spec.layers}x{spec.hidden}", spec)
        models.append((name, f"{spec.layers} layers, hidden {spec.hidden}, {spec.heads}/{spec.kv_heads} heads"))
    counts = [4] if args.quick else [int(x) for x in args.frames.split(",")]
    reps = 1 if args.quick else args.reps
    methods = [m for m in args.methods.split(",") if m]

    results = []
    for model_id, description in models:
        lm = load_model(model_id, device=args.device, dtype=args.dtype)
        runs = []
        for count in counts:
            run = measure(lm, count, methods, args.budget, reps)
            runs.append(run)
            worst = max(run["methods"].values(), key=lambda r: r["overhead_ratio"])["overhead_ratio"]
            print(
                f"{model_id} {count} frames: prefill {run['prefill_seconds']:.3f}s, "
                + ", ".join(f"{m} {r['overhead_ratio'] * 100:.1f}%" for m, r in run["methods"].items())
                + f" (worst {worst * 100:.1f}%)",
                flush=True,
            )
        results.append(
            {"model": model_id, "description": description, "device": args.device, "dtype": args.dtype, "runs": runs}
        )
    meta = {
        "machine": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "budget": args.budget,
        "reps": reps,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results, args.budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())
