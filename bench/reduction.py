"""Token reduction before the language model: LLM prefill and time to first token, side by side in one run.

For each frame count, the same prepared prompt (the processor's output for a synthetic video: a
static textured background with a moving square, so that consecutive frames repeat most of their
tokens) goes through the real pipeline, ``run_to_end(PrunedPrefill(...).steps(prompt))`` and the
first token's argmax, question-aware, for:

- ``none``: no reduction (the one-shot prefill: the vision tower inside the model's forward);
- ``evs`` and ``vidcom2`` at 50% and 25% retention (KV method ``full``): the tower runs inside the
  reduction, then the language model prefills the kept tokens from their precomputed features;
- ``evs 50% + das 40%``: the reduction composed with KV pruning at a 40% budget (of the kept tokens).

Repetitions are interleaved (none, evs 50%, evs 25%, ..., then again) and medians taken, after one
warm-up run of every configuration at the first frame count. Per run:

- **TTFT**: wall time from the prepared prompt to the first token (the whole ``steps()`` driven to
  its end, prune included, then the argmax of the last logits);
- **vision**: the time spent inside the vision tower (with its merger), timed by hooks on the
  tower module, wherever it runs: inside the forward (``none``) or inside the reduction;
- **LLM prefill**: the time inside ``ModelRunner.prefill`` (the language-model forward over the
  prompt) minus the vision time inside it (all of the tower for ``none``, nothing for a reduced
  prompt, whose features are precomputed);
- **other**: TTFT - vision - LLM prefill: the reduction's scoring and gathering, ``prune()``, the
  pipeline's own work.

The speed-ups are ratios against ``none`` in the same run. On a GPU every boundary synchronises.

The model is a Qwen2-VL-architecture model with random weights: ``--spec`` gives its language model
(default: Qwen2-VL-2B's width at 2 layers), ``--vision`` its vision tower's width and depth (default:
the tiny test models' tower, 32 wide and 2 deep, so on a CPU the tower costs little next to the
language model; ``1280,32`` is Qwen2-VL-2B's, with the tiny builder's MLP ratio 2 and 32-wide
heads), ``--size`` the frames' side (224 px: 64 visual tokens per pair of frames).

    python bench/reduction.py                      # CPU defaults: Qwen2-VL-2B width at 2 layers, 32/64/256 frames
    python bench/reduction.py --quick              # tiny model, 8/16 frames, one repetition
    python bench/reduction.py --device cuda:0 --dtype bfloat16 --spec 28,1536,12,2,8960 --vision 1280,32 --size 448

Writes JSON (``--json``) and a markdown table per frame count (``--markdown``).
"""

from __future__ import annotations

import argparse
import json
import os
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
from videoqa.worker.pruning.pipeline import PrunedPrefill, run_to_end
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.reduction.registry import build_reduction
from videoqa.worker.types import DecodedMedia, PruningSpec, ReductionSpec

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What happens in the last frames of the video?"
#: Qwen2-VL-2B's language model at 2 layers (per-layer costs, hence the ratios, do not depend on depth).
DEFAULT_SPEC = "2,1536,12,2,8960"
#: name: (reduction or None, KV method, KV budget)
CONFIGS: dict[str, tuple[ReductionSpec | None, str, float]] = {
    "none": (None, "full", 1.0),
    "evs 50%": (ReductionSpec("evs", {}, 0.5), "full", 1.0),
    "evs 25%": (ReductionSpec("evs", {}, 0.25), "full", 1.0),
    "vidcom2 50%": (ReductionSpec("vidcom2", {}, 0.5), "full", 1.0),
    "vidcom2 25%": (ReductionSpec("vidcom2", {}, 0.25), "full", 1.0),
    "evs 50% + das 40%": (ReductionSpec("evs", {}, 0.5), "das", 0.4),
}
#: The issue's target, at 25% retention and 64 frames: LLM prefill and TTFT speed-ups against none.
TARGET = {"frames": 64, "llm_prefill_speedup": 3.0, "ttft_speedup": 2.0}


def moving_square(count: int, size: int, square: int = 0, step: int = 0) -> DecodedMedia:
    """``count`` frames of a static textured background (seeded) with a red square moving left to
    right and down, wrapping: most of each frame repeats the previous one."""
    rng = np.random.RandomState(0)
    coarse = rng.randint(0, 256, size=(size // 16 + 1, size // 16 + 1, 3)).astype(np.uint8)
    background = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:size, :size]
    background = np.clip(background.astype(np.int16) + rng.randint(-12, 13, size=background.shape), 0, 255)
    background = background.astype(np.uint8)
    square = square or size // 5
    step = step or max(1, size // 40)
    out = np.repeat(background[None], count, axis=0)
    travel = size - square
    for i in range(count):
        x = (i * step) % travel
        y = (i * step // 2) % travel
        out[i, y : y + square, x : x + square] = (220, 30, 30)
    return DecodedMedia.from_array(out)


def register_spec(text: str, vision: str, size: int) -> tuple[str, str]:
    vision_hidden, vision_depth = (int(x) for x in vision.split(","))
    spec = tiny.TinySpec.from_shape(text, image_size=size, vision_hidden=vision_hidden, vision_depth=vision_depth)
    name = f"qwen2-vl-{spec.layers}x{spec.hidden}-v{vision_hidden}x{vision_depth}-{size}px"
    tiny.TINY_MODELS[name] = spec
    description = (
        f"Qwen2-VL, language model {spec.layers} layers, hidden {spec.hidden}, {spec.heads}/{spec.kv_heads} heads, "
        f"MLP {spec.intermediate or 2 * spec.hidden}; vision tower {vision_depth} blocks of width {vision_hidden}"
    )
    return name, description


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds spent inside the vision tower (hooks on its module) and inside ``prefill``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.vision = 0.0
        self._started = 0.0

    def reset(self) -> None:
        self.vision = 0.0

    def attach(self, tower: torch.nn.Module) -> None:
        tower.register_forward_pre_hook(self._enter)
        tower.register_forward_hook(self._leave)

    def _enter(self, *_):
        sync(self.device)
        self._started = time.perf_counter()

    def _leave(self, *_):
        sync(self.device)
        self.vision += time.perf_counter() - self._started


class TimedRunner(ModelRunner):
    """The model runner, with the time of its one-shot prefill (synchronised) and the vision time in it."""

    def __init__(self, lm, clock: Clock):
        super().__init__(lm)
        self.clock = clock
        self.prefill_s = 0.0
        self.vision_in_prefill_s = 0.0

    def prefill(self, prompt):
        sync(self.lm.device)
        vision_before = self.clock.vision
        started = time.perf_counter()
        out = super().prefill(prompt)
        sync(self.lm.device)
        self.prefill_s += time.perf_counter() - started
        self.vision_in_prefill_s += self.clock.vision - vision_before
        return out


def run_once(gen: TimedRunner, prompt, config: tuple[ReductionSpec | None, str, float]) -> dict:
    spec, method, budget = config
    pipeline = PrunedPrefill(
        gen, build_method(PruningSpec(method, {}, budget)), True, None, build_reduction(spec) if spec else None
    )
    gen.clock.reset()
    gen.prefill_s = gen.vision_in_prefill_s = 0.0
    device = gen.lm.device
    sync(device)
    started = time.perf_counter()
    out = run_to_end(pipeline.steps(prompt))
    token = int(torch.argmax(out.logits))
    sync(device)
    ttft = time.perf_counter() - started
    if gen.prefill_s == 0.0:
        raise RuntimeError("the pipeline did not take the one-shot prefill")
    llm = gen.prefill_s - gen.vision_in_prefill_s
    visual = prompt.layout.num_visual_tokens
    return {
        "ttft_s": ttft,
        "vision_s": gen.clock.vision,
        "llm_prefill_s": llm,
        "other_s": ttft - gen.clock.vision - llm,
        "visual_before": out.reduction.visual_before if out.reduction else visual,
        "visual_after": out.reduction.visual_after if out.reduction else visual,
        "prompt_tokens": out.reduction.prompt.layout.prompt_length if out.reduction else prompt.layout.prompt_length,
        "kv_visual_kept": out.result.visual_kept,
        "first_token": token,
    }


def measure(lm, clock: Clock, count: int, size: int, configs: list[str], reps: int, warm_up: bool) -> dict:
    gen = TimedRunner(lm, clock)
    prompt = lm.adapter.prepare(moving_square(count, size), QUESTION)
    for name in configs if warm_up else ():  # every code path once (at the first frame count only)
        run_once(gen, prompt, CONFIGS[name])
    samples: dict[str, list[dict]] = {name: [] for name in configs}
    for rep in range(reps):
        for name in configs:
            samples[name].append(run_once(gen, prompt, CONFIGS[name]))
        print(f"  {count} frames: repetition {rep + 1}/{reps} done", flush=True)
    rows = {}
    for name in configs:
        runs = samples[name]
        row = {
            key: statistics.median(r[key] for r in runs) for key in ("ttft_s", "vision_s", "llm_prefill_s", "other_s")
        }
        row |= {key: runs[0][key] for key in ("visual_before", "visual_after", "prompt_tokens", "kv_visual_kept")}
        row["samples"] = {key: [r[key] for r in runs] for key in ("ttft_s", "llm_prefill_s", "vision_s")}
        rows[name] = row
    if "none" in rows:
        base = rows["none"]
        for row in rows.values():
            row["llm_prefill_speedup"] = base["llm_prefill_s"] / row["llm_prefill_s"]
            row["ttft_speedup"] = base["ttft_s"] / row["ttft_s"]
    return {
        "frames": count,
        "frame_px": size,
        "prompt_tokens": prompt.layout.prompt_length,
        "visual_tokens": prompt.layout.num_visual_tokens,
        "spans": len(prompt.layout.frame_spans),
        "reps": reps,
        "configs": rows,
    }


def targets(runs: list[dict]) -> list[dict]:
    """Whether 25% retention meets the issue's speed-ups at its frame count (reported, not asserted)."""
    out = []
    for run in runs:
        if run["frames"] != TARGET["frames"] or "none" not in run["configs"]:
            continue
        for name, row in run["configs"].items():
            if not name.endswith(" 25%"):
                continue
            llm, ttft = row["llm_prefill_speedup"], row["ttft_speedup"]
            out.append(
                {
                    "frames": run["frames"],
                    "config": name,
                    "llm_prefill_speedup": llm,
                    "ttft_speedup": ttft,
                    "llm_prefill_met": llm >= TARGET["llm_prefill_speedup"],
                    "ttft_met": ttft >= TARGET["ttft_speedup"],
                }
            )
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"**{result['model']}** ({result['description']}), device {meta['device']}, {meta['dtype']}; "
        f"torch {meta['torch']}, {meta['cpu_count']} CPUs ({meta['torch_threads']} threads), {meta['platform']}",
        "",
        "Medians of interleaved repetitions. TTFT: prepared prompt to first token. Vision: inside the "
        "vision tower. LLM prefill: the language-model forward alone. Other: TTFT - vision - LLM "
        "prefill (scoring, gathering, prune). Speed-ups against none in the same run.",
    ]
    for run in result["runs"]:
        lines += [
            "",
            f"**{run['frames']} frames** ({run['frame_px']} px, {run['spans']} frame spans, "
            f"{run['visual_tokens']} visual tokens, {run['prompt_tokens']} prompt tokens, {run['reps']} repetitions)",
            "",
            "| config | visual tokens into the LLM | KV visual kept | vision s | LLM prefill s | other s | TTFT s "
            "| LLM prefill speed-up | TTFT speed-up |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in run["configs"].items():
            speed = (
                f"{row['llm_prefill_speedup']:.2f}x | {row['ttft_speedup']:.2f}x"
                if "llm_prefill_speedup" in row
                else "- | -"
            )
            lines.append(
                f"| {name} | {row['visual_after']} / {row['visual_before']} | {row['kv_visual_kept']} | "
                f"{row['vision_s']:.3f} | {row['llm_prefill_s']:.3f} | {row['other_s']:.3f} | {row['ttft_s']:.3f} | "
                f"{speed} |"
            )
    checks = result.get("targets", [])
    if checks:
        lines += [
            "",
            f"Target at {TARGET['frames']} frames, 25% retention: LLM prefill >= {TARGET['llm_prefill_speedup']:g}x, "
            f"TTFT >= {TARGET['ttft_speedup']:g}x faster than none.",
            "",
        ]
        for c in checks:
            lines.append(
                f"- {c['config']}: LLM prefill {c['llm_prefill_speedup']:.2f}x "
                f"({'met' if c['llm_prefill_met'] else 'not met'}), TTFT {c['ttft_speedup']:.2f}x "
                f"({'met' if c['ttft_met'] else 'not met'})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", default="32,64,256")
    parser.add_argument("--reps", default="3,5,2", help="repetitions: one number, or one per frame count of --frames")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="language model: layers,hidden,heads,kv_heads[,mlp]")
    parser.add_argument(
        "--vision", default="32,2", help="vision tower width,depth (the default: the tiny models' tower)"
    )
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (also the processor's cap)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 8/16 frames, one repetition")
    parser.add_argument("--json", type=Path, help="default: bench/results/reduction_cpu.json (--quick: none)")
    parser.add_argument("--markdown", type=Path, help="default: bench/results/reduction_cpu.md (--quick: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    if args.quick:
        model_id, description = "tiny-qwen2-vl", "the tiny test model: 2 layers, hidden 64, 4/2 heads"
        counts, reps = [8, 16], [1, 1]
    else:
        model_id, description = register_spec(args.spec, args.vision, args.size)
        counts = [int(x) for x in args.frames.split(",")]
        reps = [int(x) for x in args.reps.split(",")]
        reps = reps * len(counts) if len(reps) == 1 else reps
        if len(reps) != len(counts):
            parser.error("--reps: one number, or one per frame count")
    size = 224 if args.quick else args.size

    lm = load_model(model_id, device=args.device, dtype=args.dtype)
    clock = Clock(lm.device)
    clock.attach(lm.model.model.visual)
    runs = []
    for index, (count, n) in enumerate(zip(counts, reps, strict=True)):
        run = measure(lm, clock, count, size, configs, n, warm_up=index == 0)
        runs.append(run)
        print(
            f"{model_id} {count} frames ({run['visual_tokens']} visual tokens): "
            + ", ".join(
                f"{name} LLM {r['llm_prefill_s']:.3f}s TTFT {r['ttft_s']:.3f}s"
                + (f" ({r['llm_prefill_speedup']:.2f}x/{r['ttft_speedup']:.2f}x)" if "ttft_speedup" in r else "")
                for name, r in run["configs"].items()
            ),
            flush=True,
        )
    meta = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": args.device,
        "dtype": args.dtype,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", "bench/reduction.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if lm.device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(lm.device)
    result = {
        "meta": meta,
        "model": model_id,
        "description": description,
        "target": TARGET,
        "runs": runs,
    }
    result["targets"] = targets(runs)
    for c in result["targets"]:
        print(
            f"target at {c['frames']} frames, {c['config']}: LLM prefill {c['llm_prefill_speedup']:.2f}x "
            f"({'met' if c['llm_prefill_met'] else 'not met'}), TTFT {c['ttft_speedup']:.2f}x "
            f"({'met' if c['ttft_met'] else 'not met'})"
        )
    if not args.quick:
        args.json = args.json or ROOT / "bench" / "results" / "reduction_cpu.json"
        args.markdown = args.markdown or ROOT / "bench" / "results" / "reduction_cpu.md"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
