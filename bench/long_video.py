"""Long videos in bounded memory, and prefill that does not stall running answers: one run, side by side.

Three measurements, every comparison a ratio within this run:

- **memory**: the KV bytes a session holds at the peak of its prefill, and the process's peak
  resident memory during the prefill above what it held when the prefill started (the decoded
  frames and the processor's pixel tensors are held before, by both paths), for 64 / 256 / 1024
  frames (``--frames``), one configuration per child process (so each peak is its own): one-shot
  (the whole video in one forward, then pruned) at keep-all and at 20%, and chunked with
  progressive compression at 20% and with an absolute cap on visual entries.
- **stall**: inter-token gaps of ``--running`` sessions streaming long answers while new 64-frame
  uploads are admitted one after another, through the real engine (its scheduler, I/O pool,
  in-process store), with the one-shot prefill (a chunk as large as the video: today's
  behaviour) and with chunks; and the compute thread's time outside model work meanwhile, with
  every follow-up restoring its session from the store and saving it (hot tier off).
- **cost**: time to first token of a 64-frame upload with a question, chunked vs one-shot,
  repetitions interleaved, at keep-all and with ``das`` at 20%.

    python bench/long_video.py                 # CPU defaults (writes bench/results/long_video_cpu.*)
    python bench/long_video.py --quick         # a smoke run of every phase
    python bench/long_video.py --device cuda:0 --dtype bfloat16 --spec 28,3584,28,4,18944 --frames 64,256,1024,4096
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Language-model shape of the memory phase: layers, hidden, heads, KV heads, MLP width.
DEFAULT_SPEC = "2,512,8,2,1024"


# --- memory ------------------------------------------------------------------------------------------


def _register(spec_text: str) -> str:
    from videoqa.worker.model import tiny

    spec = tiny.TinySpec.from_shape(spec_text)
    name = f"long-video-{spec.layers}x{spec.hidden}"
    tiny.TINY_MODELS[name] = spec
    return name


def _frames(count: int, size: int):
    import numpy as np

    from videoqa.worker.types import DecodedMedia

    rng = np.random.RandomState(count)
    return DecodedMedia.from_array((rng.rand(count, size, size, 3) * 255).astype(np.uint8))


def _reset_peak_rss() -> None:
    """Start the process's peak resident memory over from now (Linux: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _peak_rss() -> int:
    """Peak resident memory since the last reset (VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def memory_child(args) -> dict:
    """One configuration's prefill in this (child) process; prints its measurements as JSON."""
    import torch

    from videoqa.worker.model.chunks import Chunking
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.model.loader import load_model
    from videoqa.worker.pruning.pipeline import PrunedPrefill, run_to_end
    from videoqa.worker.pruning.registry import build_method
    from videoqa.worker.types import PruningSpec

    torch.set_num_threads(args.threads)
    lm = load_model(_register(args.spec), device=args.device, dtype=args.dtype)
    media = _frames(args.count, args.size)
    prompt = lm.adapter.prepare(media, "What happens in the video?")
    media.frames = media.frames[:0]
    method = build_method(PruningSpec(args.method, {}, args.budget, args.cap))
    pipeline = PrunedPrefill(ModelRunner(lm), method, True, Chunking(args.chunk_frames))
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
        base_gpu = torch.cuda.memory_allocated(lm.device)
    base = _current_rss()
    _reset_peak_rss()
    started = time.perf_counter()
    out = run_to_end(pipeline.steps(prompt))
    seconds = time.perf_counter() - started
    peak = _peak_rss()
    result = {
        "frames": args.count,
        "visual_tokens": prompt.layout.num_visual_tokens,
        "chunks": out.chunks,
        "kv_peak_bytes": out.peak_kv_bytes,
        "kv_final_bytes": out.state.cache_bytes(),
        "process_peak_bytes": peak,
        "process_peak_above_start_bytes": max(0, peak - base),
        "prefill_seconds": seconds,
        "visual_kept": out.result.visual_kept,
    }
    if lm.device.type == "cuda":
        result["gpu_peak_above_start_bytes"] = int(torch.cuda.max_memory_allocated(lm.device) - base_gpu)
    return result


MEMORY_CONFIGS = {
    # name: (method, budget, cap, chunk frames)
    "one-shot full": ("full", 1.0, 0, 0),
    "one-shot das 20%": ("das", 0.2, 0, 0),
    "chunked das 20%": ("das", 0.2, 0, None),
    "chunked das cap": ("das", 1.0, None, None),
}


def memory_phase(args) -> list[dict]:
    rows = []
    for count in args.frame_counts:
        for name, (method, budget, cap, chunk) in MEMORY_CONFIGS.items():
            if args.quick:  # in this process: fast, and its peaks still start from each prefill's start
                child = argparse.Namespace(**vars(args))
                child.count, child.method, child.budget = count, method, budget
                child.cap = args.cap if cap is None else cap
                child.chunk_frames = args.chunk_frames if chunk is None else chunk
                rows.append({**memory_child(child), "config": name})
                continue
            command = [
                sys.executable,
                __file__,
                "--child-memory",
                "--count",
                str(count),
                "--method",
                method,
                "--budget",
                str(budget),
                "--cap",
                str(args.cap if cap is None else cap),
                "--chunk-frames",
                str(args.chunk_frames if chunk is None else chunk),
                "--spec",
                args.spec,
                "--size",
                str(args.size),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--threads",
                str(args.threads),
            ]
            run = subprocess.run(command, capture_output=True, text=True, timeout=args.child_timeout)
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                rows.append({"config": name, "frames": count, "error": run.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(run.stdout.strip().splitlines()[-1])
            row["config"] = name
            rows.append(row)
            print(
                f"memory {name:>18} {count:5d} frames: KV peak {row['kv_peak_bytes'] / 2**20:8.1f} MiB, "
                f"process +{row['process_peak_above_start_bytes'] / 2**20:8.1f} MiB, {row['prefill_seconds']:.1f}s",
                flush=True,
            )
    return rows


# --- stall and cost (the engine) -------------------------------------------------------------------


def _engine(args, chunk_frames: int):
    from videoqa.worker.engine import Engine
    from videoqa.worker.settings import WorkerSettings

    if args.stall_spec:
        _register(args.stall_spec)  # (each process registers the shapes it builds)
    settings = WorkerSettings(
        models=[args.stall_model],
        device=args.device,
        dtype=args.dtype,
        max_frames=max(64, args.upload_frames),
        max_new_tokens=4096,
        prefill_chunk_frames=chunk_frames,
        prefill_chunk_tokens=0,
        prefill_step_tokens=args.step_tokens if chunk_frames else 0,  # one-shot: one forward, as before
        hot_tier_bytes=0,  # every follow-up restores its session from the store, and saves it
        max_queued_turns=1000,
    )
    engine = Engine(settings)
    engine.load()
    no_end = _no_end_of_turn()
    for lm in engine.models.values():  # answers run to their length: random weights end them at a random EOS
        lm.__class__ = no_end
    return engine


def _no_end_of_turn():
    from videoqa.worker.model.loader import LoadedModel

    class NoEndOfTurn(LoadedModel):
        @property
        def eos_token_ids(self) -> set[int]:
            return set()

    return NoEndOfTurn


def _video(frames: int, width: int, height: int) -> bytes:
    sys.path.insert(0, str(ROOT))
    from tests.media import make_video

    return make_video(None, frames=frames, size=(width, height), fps=8)


async def _create(engine, video: bytes, frames: int, question: str | None, pruning, max_new: int):
    from videoqa.worker.engine import CreateRequest, TurnControl
    from videoqa.worker.types import (
        GenerationParams,
        MediaKind,
        SamplingSpec,
        SessionEvent,
        StatsEvent,
    )

    request = CreateRequest(
        tenant="bench",
        session_id=f"s{time.perf_counter_ns()}",
        model="",
        media_kind=MediaKind.VIDEO,
        payload=video,
        sampling=SamplingSpec(num_frames=frames, max_frames=frames),
        pruning=pruning,
        question=question,
        generation=GenerationParams(max_new_tokens=max_new),
    )
    session, stats = None, None
    async for event in engine.create_session(request, TurnControl()):
        if isinstance(event, SessionEvent):
            session = event.session.session_id
        elif isinstance(event, StatsEvent):
            stats = event.stats
    return session, stats


async def _ask(engine, session_id: str, question: str, max_new: int):
    from videoqa.worker.engine import TurnControl
    from videoqa.worker.types import GenerationParams, StatsEvent

    stats = None
    async for event in engine.ask(
        "bench", session_id, question, GenerationParams(max_new_tokens=max_new), TurnControl()
    ):
        if isinstance(event, StatsEvent):
            stats = event.stats
    return stats


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _reduced(row: dict) -> str:
    """The stall table's note on the uploads' reduction before the language model ("" without one)."""
    if row.get("upload_reduction", "none") in ("", "none"):
        return ""
    into, encoded = row["upload_visual_tokens_into_llm"], row["upload_visual_tokens_encoded"]
    return f"; uploads reduced by {row['upload_reduction']}: {encoded} visual tokens encoded, {into} into the LLM"


def upload_pruning(text: str):
    """``--upload-reduction``: ``none`` or ``NAME:RETENTION`` (read as the harness's ``--reductions``
    reads one) -> the uploads' PruningSpec (KV method ``full``; the reduction, when one is named)."""
    from videoqa.lab.harness import parse_reductions
    from videoqa.worker.types import PruningSpec, ReductionSpec

    ((name, retention),) = parse_reductions(text)
    return PruningSpec(reduction=ReductionSpec(name, {}, retention))


async def _stall_run(args, chunk_frames: int, upload: bytes, small: bytes) -> dict:
    from videoqa.worker.telemetry import ChunkPrefilled
    from videoqa.worker.types import PruningSpec

    uploads = upload_pruning(args.upload_reduction)
    engine = _engine(args, chunk_frames)
    chunks: list[float] = []
    engine.telemetry.subscribe(lambda item: chunks.append(item.prefill_s) if isinstance(item, ChunkPrefilled) else None)
    try:
        # running sessions: small videos, asked for long answers (their gaps are what we watch)
        created = [await _create(engine, small, 4, None, PruningSpec(), 1) for _ in range(args.running)]
        await _create(engine, upload, args.upload_frames, "warm-up?", uploads, 1)  # warm-up
        chunks.clear()
        scheduler = engine.scheduler
        busy0, model0 = scheduler.busy_s, scheduler.model_s
        answers = [
            asyncio.create_task(_ask(engine, session_id, "describe everything", args.answer_tokens))
            for session_id, _ in created
        ]
        await asyncio.sleep(args.lead_s)
        uploads_ttft, into_llm, encoded = [], 0, 0
        for _ in range(args.uploads):
            _, stats = await _create(engine, upload, args.upload_frames, "what is there?", uploads, 2)
            uploads_ttft.append(stats.timings.ttft_s)
            into_llm, encoded = stats.visual_tokens_before, stats.visual_tokens_encoded
        stats = await asyncio.gather(*answers)
        busy, model = scheduler.busy_s - busy0, scheduler.model_s - model0
    finally:
        engine.close()
    gaps = [gap for s in stats for gap in s.token_gaps_s]
    median = statistics.median(gaps)
    return {
        "chunk_frames": chunk_frames,
        "upload_reduction": args.upload_reduction,
        "upload_visual_tokens_encoded": encoded,
        "upload_visual_tokens_into_llm": into_llm,
        "gaps": len(gaps),
        "median_ms": 1e3 * median,
        "p90_ms": 1e3 * _percentile(gaps, 0.90),
        "p99_ms": 1e3 * _percentile(gaps, 0.99),
        "max_ms": 1e3 * max(gaps),
        "p99_over_median": _percentile(gaps, 0.99) / median,
        "chunk_prefill_median_ms": 1e3 * statistics.median(chunks) if chunks else 0.0,
        "chunk_prefill_max_ms": 1e3 * max(chunks) if chunks else 0.0,
        "chunk_prefill_min_ms": 1e3 * min(chunks) if chunks else 0.0,
        "chunks_per_upload": len(chunks) / max(1, args.uploads),
        "upload_ttft_median_s": statistics.median(uploads_ttft),
        "compute_busy_s": busy,
        "compute_outside_model_share": max(0.0, 1 - model / busy) if busy else 0.0,
    }


def stall_phase(args) -> list[dict]:
    upload = _video(max(48, args.upload_frames), args.width, args.height)
    small = _video(16, 96, 64)
    rows = []
    for chunk in (0, args.chunk_frames):
        row = asyncio.run(_stall_run(args, chunk, upload, small))
        rows.append(row)
        label = "one-shot" if chunk == 0 else f"chunks of {chunk}"
        print(
            f"stall {label:>14}: gaps median {row['median_ms']:.1f} ms, p99 {row['p99_ms']:.1f}, "
            f"max {row['max_ms']:.1f} ms; chunk prefill max {row['chunk_prefill_max_ms']:.1f} ms; "
            f"outside model {100 * row['compute_outside_model_share']:.2f}%",
            flush=True,
        )
    return rows


async def _cost_run(args, upload: bytes) -> list[dict]:
    from videoqa.worker.types import PruningSpec

    engines = {0: _engine(args, 0), args.chunk_frames: _engine(args, args.chunk_frames)}
    configs = {"full": PruningSpec(), "das 20%": PruningSpec("das", {}, 0.2)}
    ttft: dict[tuple[str, int], list[float]] = {(c, k): [] for c in configs for k in engines}
    try:
        for engine in engines.values():  # warm-up
            await _create(engine, upload, args.upload_frames, "warm-up?", PruningSpec(), 1)
        for _ in range(args.reps):
            for name, pruning in configs.items():
                for chunk, engine in engines.items():
                    _, stats = await _create(engine, upload, args.upload_frames, "what is there?", pruning, 1)
                    ttft[(name, chunk)].append(stats.timings.ttft_s)
    finally:
        for engine in engines.values():
            engine.close()
    rows = []
    for name in configs:
        one, chunked = statistics.median(ttft[(name, 0)]), statistics.median(ttft[(name, args.chunk_frames)])
        rows.append(
            {
                "config": name,
                "frames": args.upload_frames,
                "one_shot_ttft_s": one,
                "chunked_ttft_s": chunked,
                "ratio": chunked / one,
                "reps": args.reps,
            }
        )
        print(f"cost {name:>8}: TTFT one-shot {one:.3f}s, chunked {chunked:.3f}s, ratio {chunked / one:.3f}")
    return rows


def cost_phase(args) -> list[dict]:
    return asyncio.run(_cost_run(args, _video(max(48, args.upload_frames), args.width, args.height)))


# --- report ------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = [f"Run: {results['machine']}, torch {results['torch']}, {results['date']}", ""]
    memory = [r for r in results.get("memory", []) if "error" not in r]
    if memory:
        lines += [
            f"**Memory** (language model {results['args']['spec']}, frames {results['args']['size']} px, "
            f"chunks of {results['args']['chunk_frames']} frames, cap {results['args']['cap']} visual entries):",
            "",
            "| frames | config | visual tokens | chunks | KV at the prefill's peak | process peak above start | "
            "prefill s |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in memory:
            lines.append(
                f"| {r['frames']} | {r['config']} | {r['visual_tokens']} | {r['chunks']} | "
                f"{r['kv_peak_bytes'] / 2**20:.1f} MiB | {r['process_peak_above_start_bytes'] / 2**20:.0f} MiB | "
                f"{r['prefill_seconds']:.1f} |"
            )
        lines.append("")
        for config in MEMORY_CONFIGS:
            rows = sorted((r for r in memory if r["config"] == config), key=lambda r: r["frames"])
            if len(rows) > 1:
                growth = rows[-1]["kv_peak_bytes"] / rows[0]["kv_peak_bytes"]
                lines.append(
                    f"- {config}: KV peak at {rows[-1]['frames']} frames = {growth:.2f}x the peak at "
                    f"{rows[0]['frames']} frames"
                )
        lines.append("")
    stall = results.get("stall", [])
    if stall:
        a = results["args"]
        lines += [
            f"**Stall** ({a['running']} sessions streaming {a['answer_tokens']}-token answers while {a['uploads']} "
            f"uploads of {a['upload_frames']} frames ({a['width']}x{a['height']}) are admitted, {a['stall_model']}"
            + _reduced(stall[0])
            + "):",
            "",
            "| prefill | gaps | median ms | p90 ms | p99 ms | max ms | p99/median | chunks' prefill ms (min / max) | "
            "compute time outside model work |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in stall:
            label = "one-shot" if r["chunk_frames"] == 0 else f"chunks of {r['chunk_frames']} frames"
            if r["chunk_frames"] and a.get("step_tokens"):
                label += f", forwards of ≤{a['step_tokens']} tokens"
            lines.append(
                f"| {label} | {r['gaps']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['max_ms']:.1f} | {r['p99_over_median']:.2f} | "
                f"{r.get('chunk_prefill_min_ms', 0.0):.1f} / {r['chunk_prefill_max_ms']:.1f} | "
                f"{100 * r['compute_outside_model_share']:.2f}% |"
            )
        lines.append("")
    cost = results.get("cost", [])
    if cost:
        lines += [
            "**Cost** (time to first token of an upload with its question, median of "
            f"{cost[0]['reps']} interleaved repetitions):",
            "",
            "| config | frames | one-shot TTFT s | chunked TTFT s | chunked / one-shot |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in cost:
            lines.append(
                f"| {r['config']} | {r['frames']} | {r['one_shot_ttft_s']:.3f} | {r['chunked_ttft_s']:.3f} | "
                f"{r['ratio']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, directory: Path, suffix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory = [r for r in results.get("memory", []) if "error" not in r]
    if not memory:
        return
    directory.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for config in MEMORY_CONFIGS:
        rows = sorted((r for r in memory if r["config"] == config), key=lambda r: r["frames"])
        if not rows:
            continue
        x = [r["frames"] for r in rows]
        axes[0].plot(x, [r["kv_peak_bytes"] / 2**20 for r in rows], marker="o", label=config)
        axes[1].plot(x, [r["process_peak_above_start_bytes"] / 2**20 for r in rows], marker="o", label=config)
    for ax, title in zip(axes, ("KV held at the prefill's peak", "process peak above start"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames")
        ax.set_ylabel("MiB")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(directory / f"long_video_memory_{suffix}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from videoqa.worker.settings import WorkerSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of every phase")
    parser.add_argument("--phases", default="memory,stall,cost")
    parser.add_argument("--frames", default="64,256,1024", help="frame counts of the memory phase")
    parser.add_argument("--spec", default=DEFAULT_SPEC, help="memory phase model: layers,hidden,heads,kv_heads,mlp")
    parser.add_argument("--size", type=int, default=112, help="memory phase frame side in pixels")
    worker = WorkerSettings()  # the prefill's shape defaults to the worker's
    parser.add_argument("--chunk-frames", type=int, default=worker.prefill_chunk_frames, help="frames per chunk")
    parser.add_argument(
        "--step-tokens", type=int, default=worker.prefill_step_tokens, help="most tokens per forward of a chunk"
    )
    parser.add_argument("--cap", type=int, default=128, help="absolute cap on visual entries (chunked das cap)")
    parser.add_argument("--stall-model", default="tiny-qwen2-vl")
    parser.add_argument(
        "--stall-spec", default="", help="stall and cost phases on this shape (layers,hidden,heads,kv_heads,mlp)"
    )
    parser.add_argument("--running", type=int, default=4)
    parser.add_argument("--answer-tokens", type=int, default=1000)
    parser.add_argument("--uploads", type=int, default=2)
    parser.add_argument("--upload-frames", type=int, default=64)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--height", type=int, default=252)
    parser.add_argument("--lead-s", type=float, default=0.5, help="answers run alone this long before uploads")
    parser.add_argument(
        "--upload-reduction", default="none", help="stall phase: the uploads' reduction before the LLM (NAME:RETENTION)"
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child-timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--plots", type=Path)
    # a memory-phase child
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        print(json.dumps(memory_child(args)))
        return 0
    if args.quick:
        args.frames, args.spec, args.size, args.cap = "16,32", "1,64,4,2,128", 56, 8
        args.running, args.answer_tokens, args.uploads, args.upload_frames = 2, 24, 1, 8
        args.width, args.height, args.reps, args.chunk_frames, args.lead_s = 112, 84, 1, 4, 0.05
    args.frame_counts = [int(x) for x in args.frames.split(",")]
    if args.stall_spec:
        args.stall_model = _register(args.stall_spec)
    import torch

    suffix = "gpu" if args.device.startswith("cuda") else "cpu"
    results: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str)},
    }
    phases = args.phases.split(",")
    if "memory" in phases:
        results["memory"] = memory_phase(args)
    if "stall" in phases:
        results["stall"] = stall_phase(args)
    if "cost" in phases:
        results["cost"] = cost_phase(args)
    out_json = args.json or (None if args.quick else ROOT / "bench" / "results" / f"long_video_{suffix}.json")
    out_md = args.markdown or (None if args.quick else ROOT / "bench" / "results" / f"long_video_{suffix}.md")
    if out_json:
        out_json.write_text(json.dumps(results, indent=1))
    text = markdown(results)
    if out_md:
        out_md.write_text(text)
    plots = args.plots or (None if args.quick else ROOT / "docs" / "benchmarks")
    if plots:
        plot(results, plots, suffix)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
