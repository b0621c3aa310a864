"""Decode speed and memory, full cache vs pruned, measured side by side in one run.

For each frame count, one session per configuration (``full``, and each method at each budget) is
prefilled and pruned (question-aware), then copied to 1, 4, 8, 16 concurrent sessions that decode
together through the worker's batched step (:class:`~videoqa.worker.model.batch.DecodeBatch`, the
path the service uses), a fixed number of tokens each. Repetitions are interleaved across
configurations and medians taken; every comparison is a ratio within this run.

    python bench/decode.py                                  # CPU: tiny + a KV-heavy small config
    python bench/decode.py --quick                          # a seconds-long smoke run
    python bench/decode.py --device cuda:0 --dtype bfloat16 --model qwen2.5-vl-7b --model llava-video-7b
    python bench/decode.py --device cuda:0 --dtype bfloat16 --model qwen3-vl-8b --model qwen3.5-9b
    python bench/decode.py --quick --model qwen3-vl-8b --model qwen3.5-9b --scaled-down   # CPU check

Reports per configuration: prefill, prune and time-to-first-token, KV bytes per session, decode
ms/step and tokens/s per concurrency (and the unbatched single-session path), peak GPU memory
(CUDA), and how many sessions' caches fit a KV budget. Writes JSON, markdown and PNG plots.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from videoqa.worker.model import tiny
from videoqa.worker.model.batch import DecodeBatch
from videoqa.worker.model.generate import ModelRunner
from videoqa.worker.model.loader import load_model
from videoqa.worker.pruning.pipeline import PrunedPrefill
from videoqa.worker.pruning.registry import build_method
from videoqa.worker.types import DecodedMedia, PruningSpec

QUESTION = "What happens in the last frames of the video?"
#: Configurations by name: (family, layers, hidden, heads, kv_heads, intermediate, vision hidden, depth).
MODELS = {
    "tiny-qwen2-vl": None,  # the test model: 2 layers, hidden 64 (per-step Python overhead dominates)
    # Small enough for a CPU, with multi-head (not grouped) attention so that KV reads dominate decode.
    "kv-heavy-small": tiny.TinySpec("qwen2_vl", layers=2, hidden=512, heads=8, kv_heads=8, intermediate=1024),
    # Real-size widths, random weights (GPU runs): Qwen2.5-VL-7B's language model (GQA 28/4), and a
    # LLaVA-NeXT-Video-7B-like Vicuna-7B language model (MHA 32/32, where KV dominates).
    "qwen2.5-vl-7b": tiny.TinySpec(
        "qwen2_5_vl",
        layers=28,
        hidden=3584,
        heads=28,
        kv_heads=4,
        intermediate=18944,
        vision_hidden=1280,
        vision_depth=32,
        image_size=448,
    ),
    "llava-video-7b": tiny.TinySpec(
        "llava_onevision", layers=32, hidden=4096, heads=32, kv_heads=32, intermediate=11008, image_size=384
    ),
    # Qwen3-VL-8B: 36 layers, GQA 32/8 with 128-wide heads, DeepStack from vision blocks 8/16/24 of a
    # 27-block SigLIP-2-sized tower (16-pixel patches), frame times in the prompt.
    "qwen3-vl-8b": tiny.TinySpec(
        "qwen3_vl",
        layers=36,
        hidden=4096,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate=12288,
        vision_hidden=1152,
        vision_depth=27,
        vision_heads=16,
        vision_intermediate=4304,
        deepstack=(8, 16, 24),
        image_size=448,
    ),
    # A Qwen3.5 of similar size (the library's default text configuration, ~9B): 32 layers of which 8
    # have full attention (GQA 16/4, 256-wide heads, a quarter of each rotated) and 24 a gated delta
    # rule (16 key / 32 value heads of 128), the same vision tower without DeepStack.
    "qwen3.5-9b": tiny.TinySpec(
        "qwen3_5",
        layers=32,
        hidden=4096,
        heads=16,
        kv_heads=4,
        head_dim=256,
        intermediate=12288,
        full_attention_interval=4,
        linear_key_heads=16,
        linear_value_heads=32,
        linear_head_dim=128,
        vision_hidden=1152,
        vision_depth=27,
        vision_heads=16,
        vision_intermediate=4304,
        image_size=448,
    ),
}


def scaled_down(spec: tiny.TinySpec) -> tiny.TinySpec:
    """``spec`` shrunk in width and depth for a CPU check of its code path: same family, image size,
    attention layout (head groups, hybrid interval, DeepStack within the tower), 1/16 the width."""
    from dataclasses import replace

    heads, kv = max(2, spec.heads // 4), max(1, spec.kv_heads // 4)
    depth = min(spec.vision_depth, 3)
    return replace(
        spec,
        layers=2 * spec.full_attention_interval if spec.family == "qwen3_5" else 2,
        hidden=spec.hidden // 16,
        heads=heads,
        kv_heads=kv,
        head_dim=spec.head_dim // 4 if spec.head_dim else 0,
        intermediate=(spec.intermediate or 2 * spec.hidden) // 16,
        linear_key_heads=max(1, spec.linear_key_heads // 4),
        linear_value_heads=max(1, spec.linear_value_heads // 4),
        linear_head_dim=max(8, spec.linear_head_dim // 8),
        vision_hidden=max(32, spec.vision_hidden // 16),
        vision_depth=depth,
        vision_heads=2,
        vision_intermediate=0,
        deepstack=tuple(range(depth))[: len(spec.deepstack)],
    )


def frames(count: int, size: int) -> DecodedMedia:
    rng = np.random.RandomState(count)
    return DecodedMedia.from_array((rng.rand(count, size, size, 3) * 255).astype(np.uint8))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device, fn) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build_session(gen: ModelRunner, prompt, method: str, budget: float) -> dict:
    """Prefill + prune one session; its state and timings."""
    device = gen.lm.device
    pipeline = PrunedPrefill(gen, build_method(PruningSpec(method, {}, budget)), question_aware=True)
    out = {}
    prefill = clock(device, lambda: out.update(zip(("state", "logits"), pipeline.prefill(prompt), strict=True)))
    prune = clock(device, lambda: pipeline.prune(out["state"])) if method != "full" else 0.0
    first = clock(device, lambda: int(torch.argmax(out["logits"])))
    state = out["state"]
    return {
        "state": state,
        "prefill_seconds": prefill,
        "prune_seconds": prune,
        "ttft_seconds": prefill + prune + first,
        "kv_bytes": state.cache_bytes(),
        "cache_entries": state.cache_length,
    }


def one_token(gen: ModelRunner, state) -> None:
    """One unbatched decode step, with what the engine runs after it (``hae``'s bin rounds)."""
    gen.feed(state, [0])
    if state.extension is not None:
        state.extension.after_token(state)


def decode_seconds(gen: ModelRunner, state, concurrency: int, steps: int, batched: bool = True) -> tuple[float, int]:
    """Seconds per step for ``concurrency`` copies of ``state`` decoding ``steps`` tokens together
    (token 0 each step: the length is fixed, end-of-turn ignored), and the peak CUDA bytes above
    what was allocated before the copies (0 off CUDA)."""
    device = gen.lm.device
    states = [copy.deepcopy(state) for _ in range(concurrency)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if batched:
        batch = DecodeBatch(gen.lm, states)
        batch.step([0] * concurrency)  # warm-up (and the stack's first extension)
        seconds = clock(device, lambda: [batch.step([0] * concurrency) for _ in range(steps)])
    else:
        gen.feed(states[0], [0])
        seconds = clock(device, lambda: [one_token(gen, states[0]) for _ in range(steps)])
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    return seconds / steps, peak


def measure(lm, count: int, configs: list[tuple[str, float]], concurrency: list[int], args) -> dict:
    gen = ModelRunner(lm)
    prompt = lm.adapter.prepare(frames(count, args.size), QUESTION)
    gen.prefill(prompt)  # warm-up
    sessions = {f"{m}@{b:g}": build_session(gen, prompt, m, b) for m, b in configs}
    steps: dict[str, dict[int, list[float]]] = {name: {c: [] for c in concurrency} for name in sessions}
    alone: dict[str, list[float]] = {name: [] for name in sessions}
    peaks: dict[str, dict[int, int]] = {name: {} for name in sessions}
    for _ in range(args.reps):  # interleaved: every configuration sees the same machine state
        for name, session in sessions.items():
            alone[name].append(decode_seconds(gen, session["state"], 1, args.steps, batched=False)[0])
            for c in concurrency:
                try:
                    seconds, peak = decode_seconds(gen, session["state"], c, args.steps)
                except torch.OutOfMemoryError:  # these sessions do not fit the device: recorded as such
                    torch.cuda.empty_cache()
                    seconds, peak = float("inf"), -1
                steps[name][c].append(seconds)
                peaks[name][c] = max(peaks[name].get(c, 0), peak)
    per_token = lm.kv_bytes_per_token
    rows = {}
    for name, session in sessions.items():
        per_session = session["kv_bytes"] + args.steps * per_token
        rows[name] = {
            **{k: v for k, v in session.items() if k != "state"},
            "unbatched_ms_per_token": statistics.median(alone[name]) * 1000,
            "decode": {
                str(c): {  # an out-of-memory run: infinite ms, 0 tokens/s, peak -1
                    "ms_per_step": statistics.median(steps[name][c]) * 1000,
                    "tokens_per_second": c / statistics.median(steps[name][c]),
                    "peak_gpu_bytes": peaks[name][c],
                }
                for c in concurrency
            },
            "sessions_in_kv_budget": int(args.kv_budget_gib * (1 << 30) // per_session),
        }
    return {
        "frames": count,
        "prompt_tokens": prompt.layout.prompt_length,
        "visual_tokens": prompt.layout.num_visual_tokens,
        "configs": rows,
    }


def markdown(result: dict, concurrency: list[int]) -> str:
    lines = [f"\n**{result['model']}** ({result['description']}), device {result['device']}, {result['dtype']}\n"]
    head = "| frames | config | prefill (s) | prune (% of prefill) | TTFT (s) | KV / session | unbatched ms/token |"
    head += "".join(f" tok/s @{c} |" for c in concurrency) + f" sessions in {result['kv_budget_gib']:g} GiB |"
    lines += [head, "|---" * (7 + len(concurrency) + 1) + "|"]
    for run in result["runs"]:
        full = run["configs"]["full@1"]
        for name, row in run["configs"].items():
            speed = []
            for c in concurrency:
                tps = row["decode"][str(c)]["tokens_per_second"]
                reference = full["decode"][str(c)]["tokens_per_second"]
                if not tps:
                    speed.append("OOM")
                    continue
                speed.append(f"{tps:.0f} ({tps / reference:.2f}×)" if reference else f"{tps:.0f} (full: OOM)")
            sessions = row["sessions_in_kv_budget"]
            lines.append(
                f"| {run['frames']} | {name} | {row['prefill_seconds']:.3f} | "
                f"{100 * row['prune_seconds'] / row['prefill_seconds']:.1f}% | {row['ttft_seconds']:.3f} | "
                f"{row['kv_bytes'] / (1 << 20):.1f} MiB | {row['unbatched_ms_per_token']:.2f} | "
                + " | ".join(speed)
                + f" | {sessions} ({sessions / max(full['sessions_in_kv_budget'], 1):.1f}×) |"
            )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], concurrency: list[int], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for result in results:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        last = result["runs"][-1]
        for name, row in last["configs"].items():
            axes[0].plot(
                concurrency, [row["decode"][str(c)]["tokens_per_second"] for c in concurrency], "o-", label=name
            )
        axes[0].set(xlabel="concurrent sessions", ylabel="decode tokens/s", title=f"{last['frames']} frames")
        counts = [run["frames"] for run in result["runs"]]
        for name in last["configs"]:
            axes[1].plot(
                counts, [run["configs"][name]["kv_bytes"] / (1 << 20) for run in result["runs"]], "o-", label=name
            )
            top = str(concurrency[-1])
            axes[2].plot(
                counts, [run["configs"][name]["decode"][top]["ms_per_step"] for run in result["runs"]], "o-", label=name
            )
        axes[1].set(xlabel="frames", ylabel="KV MiB per session", title="KV bytes vs frames")
        axes[2].set(xlabel="frames", ylabel=f"ms per step @{concurrency[-1]} sessions", title="decode step vs frames")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{result['model']} ({result['description']}), {result['device']}")
        fig.tight_layout()
        path = out / f"decode_{result['model']}_{result['device'].replace(':', '')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help=f"configurations ({', '.join(MODELS)}); repeatable")
    parser.add_argument("--frames", default="16,32,64")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels")
    parser.add_argument("--methods", default="das,snapkv")
    parser.add_argument("--budgets", default="0.2,0.1")
    parser.add_argument("--concurrency", default="1,4,8,16")
    parser.add_argument("--steps", type=int, default=16, help="tokens decoded per timing")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kv-budget-gib", type=float, default=8.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 frames, 1 and 2 sessions, 1 repetition")
    parser.add_argument(
        "--scaled-down", action="store_true", help="the configurations shrunk in width and depth (a CPU check)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plots", type=Path, help="folder for the PNG plots")
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.concurrency, args.reps, args.steps, args.size = "4", "1,2", 1, 4, 112
    names = args.model or (["tiny-qwen2-vl"] if args.quick else ["tiny-qwen2-vl", "kv-heavy-small"])
    concurrency = [int(x) for x in args.concurrency.split(",")]
    configs = [("full", 1.0)] + [
        (m, float(b)) for m in args.methods.split(",") if m for b in args.budgets.split(",") if b
    ]
    results = []
    for name in names:
        spec = MODELS[name]
        if spec is not None:
            tiny.TINY_MODELS[name] = scaled_down(spec) if args.scaled_down else spec
        lm = load_model(name, device=args.device, dtype=args.dtype)
        config = lm.model.config.get_text_config()
        linear = len(lm.layer_kinds.linear_layers)
        description = (
            f"{config.num_hidden_layers} layers{f' ({linear} linear attention)' if linear else ''}, "
            f"hidden {config.hidden_size}, "
            f"{config.num_attention_heads}/{config.num_key_value_heads} heads"
        )
        runs = []
        for count in [int(x) for x in args.frames.split(",")]:
            run = measure(lm, count, configs, concurrency, args)
            runs.append(run)
            full = run["configs"]["full@1"]["decode"][str(concurrency[-1])]["tokens_per_second"]
            best = {k: v["decode"][str(concurrency[-1])]["tokens_per_second"] / full for k, v in run["configs"].items()}
            print(f"{name} {count} frames: tok/s vs full @{concurrency[-1]}: {best}", file=sys.stderr, flush=True)
        results.append(
            {
                "model": name,
                "description": description,
                "device": args.device,
                "dtype": args.dtype,
                "kv_budget_gib": args.kv_budget_gib,
                "kv_bytes_per_token": lm.kv_bytes_per_token,
                "runs": runs,
            }
        )
        del lm
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join(["python", "bench/decode.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    text = "".join(markdown(result, concurrency) for result in results)
    if args.markdown:
        args.markdown.write_text(text)
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        for path in plot(results, concurrency, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
