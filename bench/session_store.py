"""Stored sessions, measured in one run: size, encode/decode and Redis speed, follow-up latency.

For each configuration (model × frames × pruning), through the worker's own engine with a real
Redis store:

- bytes stored per session (prefix record) vs the full cache of the same video;
- encode / decode (restore) throughput of the session record, Redis put / get throughput;
- time to first token of a follow-up served from the hot tier, from Redis (hot tier dropped, so
  the worker restores the session), and of re-encoding the video from scratch (decode, encode,
  prefill, prune, then the question), with the ratios. Target: a follow-up ≥ 10× faster than
  re-encoding at 32 frames.

    python bench/session_store.py                     # starts a private redis-server
    python bench/session_store.py --redis-url redis://127.0.0.1:6379/0 --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

from videoqa.worker.engine import CreateRequest, Engine, TurnControl
from videoqa.worker.kvcache.records import encode_prefix, restore
from videoqa.worker.model import tiny
from videoqa.worker.settings import WorkerSettings
from videoqa.worker.types import GenerationParams, MediaKind, PruningSpec, SamplingSpec, StatsEvent

MiB = 1 << 20


def private_redis() -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.mkdtemp(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    return f"redis://127.0.0.1:{port}/0", process


async def turn_stats(events) -> tuple[object, list]:
    stats, all_events = None, []
    async for event in events:
        all_events.append(event)
        if isinstance(event, StatsEvent):
            stats = event.stats
    return stats, all_events


async def create(engine: Engine, video: bytes, frames: int, pruning: PruningSpec, question: str | None):
    request = CreateRequest(
        tenant="bench",
        session_id=uuid.uuid4().hex,
        model=engine.default_model,
        media_kind=MediaKind.VIDEO,
        payload=video,
        sampling=SamplingSpec(num_frames=frames, max_frames=0, max_resolution=0),
        pruning=pruning,
        question=question,
        generation=GenerationParams(max_new_tokens=4),
    )
    stats, _ = await turn_stats(engine.create_session(request, TurnControl()))
    return request.session_id, stats


async def follow_up(engine: Engine, session_id: str, question: str) -> float:
    stats, _ = await turn_stats(
        engine.ask("bench", session_id, question, GenerationParams(max_new_tokens=4), TurnControl())
    )
    return stats.timings.ttft_s


async def measure(engine: Engine, video: bytes, frames: int, method: str, budget: float, reps: int) -> dict:
    pruning = PruningSpec(method, {}, budget)
    lm = engine.models[engine.default_model]
    session_id, _ = await create(engine, video, frames, pruning, None)
    await follow_up(engine, session_id, "warm-up?")
    hot, cold, scratch = [], [], []
    for i in range(reps):
        hot.append(await follow_up(engine, session_id, f"hot question {i}?"))
        engine.sessions._forget(session_id)  # drop the hot copy: the next turn restores from Redis
        cold.append(await follow_up(engine, session_id, f"cold question {i}?"))
        _, stats = await create(engine, video, frames, pruning, f"fresh question {i}?")
        scratch.append(stats.timings.ttft_s)
    session = engine.sessions.get("bench", session_id)
    started = time.perf_counter()
    blob = encode_prefix(session, lm.revision, "float32")
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    restore(blob, [], model_id=lm.model_id, revision=lm.revision, device=lm.device, dtype=lm.dtype)
    decode_s = time.perf_counter() - started
    store = engine.sessions.store
    key = uuid.uuid4().hex
    started = time.perf_counter()
    store.create(key, {"tenant": "bench"}, blob)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    store.load(key)
    get_s = time.perf_counter() - started
    store.delete(key)
    full_bytes = session.state.next_pos * lm.kv_bytes_per_token
    hot_ms, cold_ms, scratch_ms = (statistics.median(x) * 1000 for x in (hot, cold, scratch))
    return {
        "frames": frames,
        "method": method,
        "budget": budget,
        "context_tokens": session.state.next_pos,
        "cache_entries": session.state.cache_length,
        "stored_bytes": len(blob),
        "full_cache_bytes": full_bytes,
        "stored_vs_full": len(blob) / full_bytes,
        "encode_MBps": len(blob) / MiB / encode_s,
        "decode_MBps": len(blob) / MiB / decode_s,
        "redis_put_MBps": len(blob) / MiB / put_s,
        "redis_get_MBps": len(blob) / MiB / get_s,
        "ttft_hot_ms": hot_ms,
        "ttft_redis_ms": cold_ms,
        "ttft_reencode_ms": scratch_ms,
        "speedup_hot": scratch_ms / hot_ms,
        "speedup_redis": scratch_ms / cold_ms,
    }


def markdown(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(f"\n**{result['model']}** ({result['description']}), device {result['device']}\n")
        lines.append(
            "| frames | method | context | stored / full cache | encode MB/s | decode MB/s | Redis put MB/s "
            "| Redis get MB/s | TTFT hot (ms) | TTFT Redis (ms) | TTFT re-encode (ms) | re-encode / hot "
            "| re-encode / Redis |"
        )
        lines.append("|---" * 13 + "|")
        for r in result["runs"]:
            lines.append(
                f"| {r['frames']} | {r['method']} {r['budget']:.0%} | {r['context_tokens']} | "
                f"{r['stored_bytes'] / 1024:.0f} / {r['full_cache_bytes'] / 1024:.0f} KiB "
                f"({r['stored_vs_full']:.2f}) | {r['encode_MBps']:.0f} | {r['decode_MBps']:.0f} | "
                f"{r['redis_put_MBps']:.0f} | {r['redis_get_MBps']:.0f} | "
                f"{r['ttft_hot_ms']:.1f} | {r['ttft_redis_ms']:.1f} | {r['ttft_reencode_ms']:.1f} | "
                f"{r['speedup_hot']:.1f}× | {r['speedup_redis']:.1f}× |"
            )
    return "\n".join(lines) + "\n"


async def run(args) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the synthetic test clips
    from tests.media import make_video

    models = [("tiny-qwen2-vl", "2 layers, hidden 64")]
    if not args.quick:
        tiny.TINY_MODELS["qwen2-vl-2x1536"] = tiny.TinySpec(
            "qwen2_vl", layers=2, hidden=1536, heads=12, kv_heads=2, intermediate=8960
        )
        models.append(("qwen2-vl-2x1536", "Qwen2-VL-2B width, 2 layers"))
    frame_counts = [8] if args.quick else [int(x) for x in args.frames.split(",")]
    video = make_video(None, frames=96, size=(448, 252), fps=24)
    results = []
    for model_id, description in models:
        engine = Engine(WorkerSettings(models=[model_id], redis_url=args.redis_url, max_frames=64, device=args.device))
        await asyncio.to_thread(engine.load)
        runs = []
        for frames in frame_counts:
            for method, budget in (("full", 1.0), ("das", 0.2)):
                row = await measure(engine, video, frames, method, budget, 1 if args.quick else args.reps)
                runs.append(row)
                print(
                    f"{model_id} {frames} frames {method}: stored {row['stored_vs_full']:.2f} of full, "
                    f"TTFT hot {row['ttft_hot_ms']:.1f} ms, Redis {row['ttft_redis_ms']:.1f} ms, "
                    f"re-encode {row['ttft_reencode_ms']:.1f} ms ({row['speedup_redis']:.1f}× from Redis)",
                    flush=True,
                )
        engine.close()
        results.append({"model": model_id, "description": description, "device": args.device, "runs": runs})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url")
    parser.add_argument("--frames", default="16,32,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    process = None
    if not args.redis_url:
        args.redis_url, process = private_redis()
    try:
        results = asyncio.run(run(args))
    finally:
        if process is not None:
            process.kill()
    meta = {"machine": platform.platform(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
