"""Stored sessions, measured in one run: size, encode/decode and Redis speed, follow-up latency,
and the store's save/restore throughput against raw Redis.

Part ``engine``: for each configuration (model × frames × pruning), through the worker's own engine
with a real Redis store:

- bytes stored per session (prefix record) vs the full cache of the same video;
- encode / decode (restore) throughput of the session record, Redis put / get throughput;
- time to first token of a follow-up served from the hot tier, from Redis (hot tier dropped, so
  the worker restores the session), and of re-encoding the video from scratch (decode, encode,
  prefill, prune, then the question), with the ratios. Target: a follow-up ≥ 10× faster than
  re-encoding at 32 frames.

Part ``throughput``: 7B-shaped session records (28 layers × 4 KV heads × 128 dims, bf16, in the
record envelope of ``kvcache/serde.py``; 10, 50, 200 and 500 MiB by their token count) saved
(``RedisStore.create``) and restored (``RedisStore.load``) through a single Redis and through a Redis
Cluster (3 masters + 3 replicas, ``tests/redis_cluster.py``, unless ``--cluster-url``), each as a
ratio of ``redis-benchmark``'s raw SET / GET throughput (one client, no pipelining) measured on the
same server in the same run: at the store's chunk size (the values the store really writes: the
fair reference) and at the record's whole size. Target: ≥ 50% of raw.

    python bench/session_store.py                     # starts a private redis-server (and cluster)
    python bench/session_store.py --redis-url redis://127.0.0.1:6379/0 --quick
    python bench/session_store.py --parts throughput --cluster-url redis+cluster://127.0.0.1:7000
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
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
from urllib.parse import urlsplit

import torch

from videoqa.worker.engine import CreateRequest, Engine, TurnControl
from videoqa.worker.kvcache import serde
from videoqa.worker.kvcache.manifest import Owner
from videoqa.worker.kvcache.records import encode_prefix, restore
from videoqa.worker.kvcache.store import RedisStore
from videoqa.worker.model import tiny
from videoqa.worker.settings import WorkerSettings
from videoqa.worker.types import GenerationParams, MediaKind, PruningSpec, SamplingSpec, StatsEvent

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/: the synthetic test clips, the local Redis Cluster

# A 7B-class model's KV per token: Qwen2(-VL)-7B has 28 layers, 4 KV heads of 128 dims; bf16.
SHAPE_7B = {"layers": 28, "kv_heads": 4, "head_dim": 128, "dtype": "bfloat16"}
BYTES_PER_TOKEN_7B = SHAPE_7B["layers"] * 2 * SHAPE_7B["kv_heads"] * SHAPE_7B["head_dim"] * 2


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
    store.create(key, bench_owner(lm.model_id, lm.revision), blob)
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


def bench_owner(model_id: str = "bench", revision: str = "bench") -> Owner:
    """The owner a stored session is created with."""
    return Owner("bench", model_id, revision, time.time())


# --- part "throughput": the store's bytes against raw Redis ------------------------------------------


def session_blob_7b(size_bytes: int) -> tuple[bytes, int]:
    """A prefix-like record of a 7B-shaped cache of about ``size_bytes``: (blob, tokens)."""
    tokens = max(1, round(size_bytes / BYTES_PER_TOKEN_7B))
    generator = torch.Generator().manual_seed(tokens)
    shape = (1, SHAPE_7B["kv_heads"], tokens, SHAPE_7B["head_dim"])
    tensors = {}
    for i in range(SHAPE_7B["layers"]):
        for kind in "kv":
            tensors[f"{kind}.{i}"] = torch.randn(shape, generator=generator).to(torch.bfloat16)
    header = {"kind": "prefix", "bench": "7b-shaped", "next_pos": tokens, "layers": [list(shape[1:])] * 28}
    return serde.encode(header, tensors), tokens


def redis_benchmark(host: str, port: int, size: int, requests: int, *, cluster: bool, db: int = 0) -> dict:
    """``redis-benchmark -t set,get -d size -n requests -c 1 -P 1 --csv``: bytes/s of SET and GET
    (from its requests per second: its latency figures stop at the first byte of a GET's reply and at
    3 s, so they do not give throughput)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not installed (Debian: apt-get install redis-tools)")
    command = [binary, "-h", host, "-p", str(port), "-t", "set,get", "-d", str(size), "-n", str(requests)]
    command += ["-c", "1", "-P", "1", "--csv"] + (["--cluster"] if cluster else ["--dbnum", str(db)])
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    rows = {r[0]: r for r in csv.reader(io.StringIO(run.stdout)) if r and r[0] in ("SET", "GET")}
    if run.returncode != 0 or set(rows) != {"SET", "GET"}:
        raise RuntimeError(f"redis-benchmark failed ({run.returncode}): {run.stdout[-500:]} {run.stderr[-500:]}")
    return {
        "value_bytes": size,
        "requests": requests,
        "set_rps": float(rows["SET"][1]),
        "get_rps": float(rows["GET"][1]),
        "set_MiBps": float(rows["SET"][1]) * size / MiB,
        "get_MiBps": float(rows["GET"][1]) * size / MiB,
    }


def raw_requests(size: int, quick: bool) -> int:
    """redis-benchmark requests for values of ``size``: about 2 GiB in all (quick: 64 MiB), at least 3.
    With --cluster, redis-benchmark's clock ticks every 250 ms: each test must run for seconds."""
    return max(3, -(-(64 if quick else 2048) * MiB // size))


def store_reps(size: int, reps: int) -> int:
    """Saves and restores per size: ``reps``, more for small records (about 256 MiB in all, ≤ 25)."""
    return max(reps, min(25, (256 * MiB) // size))


def drop_benchmark_keys(client) -> None:
    """redis-benchmark's keys (``key:__rand_int__``; ``key:{tag}:__rand_int__`` with --cluster)."""
    keys = list(client.scan_iter(match="key:*__rand_int__", count=1000))
    for key in keys:
        client.delete(key)


def timed_store(store: RedisStore, blob: bytes, reps: int) -> tuple[float, float]:
    """Median seconds of ``create`` (save) and ``load`` (restore) of ``blob`` over ``reps`` sessions."""
    saves, loads = [], []
    for rep in range(reps):
        session_id = str(uuid.uuid4())
        started = time.perf_counter()
        store.create(session_id, bench_owner(), blob)
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        loaded = store.load(session_id)
        loads.append(time.perf_counter() - started)
        if rep == 0 and loaded.prefix != blob:
            raise RuntimeError("the store gave back other bytes than it was given")
        del loaded
        store.delete(session_id)
    return statistics.median(saves), statistics.median(loads)


def throughput(args, targets: dict[str, str]) -> dict:
    """Save / restore of 7B-shaped records per target (name → store URL), against redis-benchmark.

    Per record size and target, in this order: raw SET / GET at the chunk size, the store's saves
    and restores, raw SET / GET at the record's size; so each ratio compares measurements taken
    within seconds of each other (this box is shared: its load drifts over a run)."""
    import redis
    from redis.cluster import RedisCluster

    sizes = [int(float(x) * MiB) for x in args.sizes.split(",")]
    stores, clients, endpoints = {}, {}, {}
    for name, url in targets.items():
        parts = urlsplit(url)
        cluster = parts.scheme.endswith("+cluster")
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        endpoints[name] = (host, port, cluster, 0 if cluster else int(parts.path[1:] or 0))
        stores[name] = RedisStore(
            url, ttl_s=600, max_session_bytes=max(sizes) * 2, chunk_bytes=args.chunk_bytes, timeout_s=120
        )
        clients[name] = RedisCluster(host=host, port=port) if cluster else redis.Redis.from_url(url)
        timed_store(stores[name], b"warm-up" * 1000, 1)  # connections (and the cluster's slot map) first

    def raw(name: str, size: int) -> dict:
        host, port, cluster, db = endpoints[name]
        result = redis_benchmark(host, port, size, raw_requests(size, args.quick), cluster=cluster, db=db)
        drop_benchmark_keys(clients[name])
        return result

    rows = []
    for target_bytes in sizes:
        blob, tokens = session_blob_7b(target_bytes)
        started = time.perf_counter()
        _, tensors = serde.decode(blob)
        decode_s = time.perf_counter() - started
        started = time.perf_counter()
        serde.encode({"kind": "prefix"}, tensors)
        encode_s = time.perf_counter() - started
        del tensors
        for name in targets:
            raw_chunk = raw(name, args.chunk_bytes)
            reps = 1 if args.quick else store_reps(len(blob), args.reps)
            save_s, load_s = timed_store(stores[name], blob, reps)
            raw_same = raw(name, len(blob))
            save, load = len(blob) / MiB / save_s, len(blob) / MiB / load_s
            row = {
                "target": name,
                "tokens": tokens,
                "bytes": len(blob),
                "reps": reps,
                "serde_encode_MiBps": len(blob) / MiB / encode_s,
                "serde_decode_MiBps": len(blob) / MiB / decode_s,
                "save_MiBps": save,
                "load_MiBps": load,
                "raw_chunk": raw_chunk,
                "raw_same": raw_same,
                "save_vs_raw_chunk": save / raw_chunk["set_MiBps"],
                "load_vs_raw_chunk": load / raw_chunk["get_MiBps"],
                "save_vs_raw_same": save / raw_same["set_MiBps"],
                "load_vs_raw_same": load / raw_same["get_MiBps"],
            }
            rows.append(row)
            print(
                f"{name} {len(blob) / MiB:.0f} MiB ({tokens} tokens): save {save:.0f} MiB/s = "
                f"{row['save_vs_raw_chunk']:.0%} of raw SET at the chunk size ({raw_chunk['set_MiBps']:.0f} MiB/s), "
                f"{row['save_vs_raw_same']:.0%} at the record size; restore {load:.0f} MiB/s = "
                f"{row['load_vs_raw_chunk']:.0%} of raw GET ({raw_chunk['get_MiBps']:.0f} MiB/s), "
                f"{row['load_vs_raw_same']:.0%}",
                flush=True,
            )
        del blob
    for client in clients.values():
        client.close()
    return {
        "shape": {**SHAPE_7B, "bytes_per_token": BYTES_PER_TOKEN_7B},
        "chunk_bytes": args.chunk_bytes,
        "targets": dict(targets),
        "rows": rows,
        "target_ratio": 0.5,
    }


def throughput_markdown(result: dict) -> str:
    shape = result["shape"]
    low, high = min(r["reps"] for r in result["rows"]), max(r["reps"] for r in result["rows"])
    reps = f"{low}" if low == high else f"{low}–{high}"
    lines = [
        f"\n**Store throughput**: 7B-shaped records ({shape['layers']} layers × {shape['kv_heads']} KV heads × "
        f"{shape['head_dim']} dims, bf16: {shape['bytes_per_token'] / 1024:.0f} KiB per token), chunks of "
        f"{result['chunk_bytes'] / MiB:.0f} MiB, median of {reps} saves and restores; raw = redis-benchmark, "
        "1 client, no pipelining, same server, measured just before (chunk size) and after (record size)\n",
        "| target | record | tokens | save MiB/s | restore MiB/s | raw SET / GET MiB/s (chunk size) "
        "| save / raw | restore / raw | raw SET / GET MiB/s (record size) | save / raw | restore / raw "
        "| serde encode / decode MiB/s |",
        "|---" * 12 + "|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['target']} | {r['bytes'] / MiB:.0f} MiB | {r['tokens']} | {r['save_MiBps']:.0f} | "
            f"{r['load_MiBps']:.0f} | {r['raw_chunk']['set_MiBps']:.0f} / {r['raw_chunk']['get_MiBps']:.0f} | "
            f"{r['save_vs_raw_chunk']:.0%} | {r['load_vs_raw_chunk']:.0%} | "
            f"{r['raw_same']['set_MiBps']:.0f} / {r['raw_same']['get_MiBps']:.0f} | "
            f"{r['save_vs_raw_same']:.0%} | {r['load_vs_raw_same']:.0%} | "
            f"{r['serde_encode_MiBps']:.0f} / {r['serde_decode_MiBps']:.0f} |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--redis-url", help="single Redis (default: a private redis-server)")
    parser.add_argument("--cluster-url", help="redis+cluster://host:port (default: a private local cluster)")
    parser.add_argument("--parts", default="engine,throughput", help="engine, throughput or both")
    parser.add_argument("--targets", default="redis,cluster", help="the throughput part's stores")
    parser.add_argument("--frames", default="16,32,64")
    parser.add_argument("--sizes", help="record sizes in MiB (default 10,50,200,500; --quick: 1,10)")
    parser.add_argument("--chunk-bytes", type=int, default=8 * MiB, help="the store's chunk size")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    parts, target_names = set(args.parts.split(",")), args.targets.split(",")
    if not parts <= {"engine", "throughput"} or not set(target_names) <= {"redis", "cluster"}:
        parser.error("--parts takes engine,throughput; --targets takes redis,cluster")
    args.sizes = args.sizes or ("1,10" if args.quick else "10,50,200,500")
    process, cluster = None, None
    if not args.redis_url:
        args.redis_url, process = private_redis()
    try:
        results = asyncio.run(run(args)) if "engine" in parts else []
        store_throughput = None
        if "throughput" in parts:
            targets = {}
            if "redis" in target_names:
                targets["redis"] = args.redis_url
            if "cluster" in target_names:
                if not args.cluster_url:
                    from tests.redis_cluster import LocalRedisCluster

                    cluster = LocalRedisCluster().start()
                    print(f"local Redis Cluster up in {cluster.startup_s:.1f} s", flush=True)
                targets["cluster"] = args.cluster_url or cluster.url
            store_throughput = throughput(args, targets)
    finally:
        if process is not None:
            process.kill()
        if cluster is not None:
            cluster.stop()
    meta = {"machine": platform.platform(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if store_throughput is not None:
        version = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
        meta["redis_benchmark"] = version.stdout.strip()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"meta": meta, "results": results}
        if store_throughput is not None:
            out["throughput"] = store_throughput
        args.json.write_text(json.dumps(out, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        text = markdown(results) if results else ""
        if store_throughput is not None:
            text += throughput_markdown(store_throughput)
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
