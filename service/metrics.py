"""Prometheus metrics: every metric videoqa exports, defined and fed in this one module.

The catalog (names, labels, meaning) is in docs/operations.md. Three sources feed it:

- a gRPC server interceptor (:meth:`Metrics.interceptor`): requests by rpc and status code,
  in-flight requests, end-to-end latency, for the frontend and the worker;
- the worker's :class:`~videoqa.worker.telemetry.Telemetry` records (:meth:`Metrics.watch_engine`):
  per-turn latency, cache builds, session store timings, observed as they happen;
- a collector that reads the worker's plain counters and gauges at scrape time (queue depth,
  sessions, lookups by result, GPU memory, model info).

Each process (or each ``serve``, which runs frontend and worker together) owns one
:class:`Metrics` with its own registry, served on ``VIDEOQA_METRICS_LISTEN``.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from functools import partial

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from videoqa.service.interceptors import guarded, own_rpc
from videoqa.worker.telemetry import CacheBuilt, ChunkPrefilled, MediaAppended, Sized, StoreFailure, Timed
from videoqa.worker.types import TurnStats

log = logging.getLogger(__name__)

#: Latency buckets from 5 ms to 5 minutes: a video prefill of tens of thousands of tokens takes seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300)
#: Per-token gaps and small stages: 0.5 ms to 10 s.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
COUNT_BUCKETS = tuple(float(2**i) for i in range(0, 17))  # 1 … 65536
BYTES_BUCKETS = tuple(float(4**i) for i in range(5, 19))  # 1 KiB … 64 GiB
RATIO_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

STORE_OPS = ("create", "append", "manifest", "verify", "load", "delete", "acquire")
LOOKUP_RESULTS = {
    "lookup_hot": "hit-hot",
    "lookup_missing": "miss",
    "lookup_expired": "expired",
    "lookup_forbidden": "forbidden",
    "lookup_corrupt": "corrupt",
    "lookup_incompatible": "incompatible",
}
TURN_OUTCOMES = {
    "turns_completed": "completed",
    "turns_cancelled": "cancelled",
    "turns_deadline_exceeded": "deadline_exceeded",
    "turns_failed": "failed",
    "turns_replayed": "replayed",
}
STORED_COUNT_INTERVAL_S = 30.0


class Metrics:
    """All of one process's metrics, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        counter, gauge, histogram = (partial(kind, registry=self.registry) for kind in (Counter, Gauge, Histogram))
        rpc = ("component", "rpc")
        turn = ("model", "method", "turn")
        self.requests = counter("videoqa_requests", "RPCs finished, by status code", (*rpc, "code"))
        self.in_flight = gauge("videoqa_requests_in_flight", "RPCs running now", rpc)
        self.request_seconds = histogram(
            "videoqa_request_duration_seconds", "End-to-end RPC latency", rpc, buckets=LATENCY_BUCKETS
        )
        self.queue_wait = histogram(
            "videoqa_queue_wait_seconds", "Time a turn waited for the model", ("model",), buckets=LATENCY_BUCKETS
        )
        self.ttft = histogram(
            "videoqa_time_to_first_token_seconds",
            "Request start to the first answer token (first: includes decoding and encoding the video)",
            turn,
            buckets=LATENCY_BUCKETS,
        )
        self.itl = histogram(
            "videoqa_inter_token_latency_seconds", "Gap between answer tokens", turn, buckets=FAST_BUCKETS
        )
        self.generation = histogram(
            "videoqa_generation_seconds", "Decoding the answer, first token to last", turn, buckets=LATENCY_BUCKETS
        )
        self.turn_seconds = histogram(
            "videoqa_turn_duration_seconds", "A whole turn (upload excluded)", turn, buckets=LATENCY_BUCKETS
        )
        self.prompt_tokens = counter("videoqa_prompt_tokens", "Tokens prefilled for turns", turn)
        self.generated_tokens = counter("videoqa_generated_tokens", "Answer tokens generated", turn)
        self.gpu_peak = histogram(
            "videoqa_turn_gpu_memory_peak_bytes", "Peak CUDA memory during a turn", ("model",), buckets=BYTES_BUCKETS
        )
        built = ("model", "method")
        self.frame_decode = histogram(
            "videoqa_frame_decode_seconds", "Media decode and frame sampling", ("model",), buckets=LATENCY_BUCKETS
        )
        self.vision_encode = histogram(
            "videoqa_vision_encode_seconds",
            "Frames to model inputs (the processor)",
            ("model",),
            buckets=LATENCY_BUCKETS,
        )
        self.prefill = histogram(
            "videoqa_prefill_seconds",
            "Prefill of the video prompt (vision tower and language model)",
            built,
            buckets=LATENCY_BUCKETS,
        )
        self.prune = histogram(
            "videoqa_prune_seconds", "Choosing and compacting the kept cache", built, buckets=FAST_BUCKETS
        )
        self.frames = histogram(
            "videoqa_frames_per_request", "Frames sampled per new session", ("model",), buckets=COUNT_BUCKETS
        )
        self.visual_tokens_per_request = histogram(
            "videoqa_visual_tokens_per_request", "Visual tokens before pruning", ("model",), buckets=COUNT_BUCKETS
        )
        self.visual_tokens = counter(
            "videoqa_visual_tokens",
            "Visual tokens the vision tower made (encoded), went into the language model after any "
            "reduction (input), kept in the KV, and folded into the bin (recycled)",
            (*built, "state"),
        )
        self.kv_bytes = histogram(
            "videoqa_kv_cache_bytes",
            "KV bytes of a new session, full and compressed",
            (*built, "state"),
            buckets=BYTES_BUCKETS,
        )
        self.kv_ratio = histogram(
            "videoqa_kv_compression_ratio", "Compressed / full KV bytes of a new session", built, buckets=RATIO_BUCKETS
        )
        self.chunk_prefill = histogram(
            "videoqa_prefill_chunk_seconds",
            "One prefill chunk's forward (vision tower and language model), uploads and appended media",
            ("model",),
            buckets=LATENCY_BUCKETS,
        )
        self.chunk_compress = histogram(
            "videoqa_prefill_chunk_compress_seconds",
            "Compressing the cache after a prefill chunk (progressive methods)",
            ("model",),
            buckets=FAST_BUCKETS,
        )
        self.frames_appended = counter("videoqa_frames_appended", "Frames appended to existing sessions", built)
        self.segments_appended = counter(
            "videoqa_media_segments_appended", "Media segments appended to existing sessions", built
        )
        self.append_kv_peak = histogram(
            "videoqa_append_kv_peak_bytes",
            "KV bytes a session held at the peak of an append's prefill",
            built,
            buckets=BYTES_BUCKETS,
        )
        self.serialize = histogram(
            "videoqa_session_serialize_seconds", "Session record encoding and decoding", ("op",), buckets=FAST_BUCKETS
        )
        self.record_bytes = histogram(
            "videoqa_session_record_bytes", "Size of stored session records", ("kind",), buckets=BYTES_BUCKETS
        )
        self.store_seconds = histogram(
            "videoqa_session_store_seconds", "One session store operation", ("backend", "op"), buckets=FAST_BUCKETS
        )
        self.store_errors = counter(
            "videoqa_session_store_errors", "Session store operations that failed (unreachable)", ("backend", "op")
        )
        self.build_info = gauge(
            "videoqa_build_info", "What is running", ("version", "python", "torch", "transformers", "grpcio")
        )

    # --- build info ------------------------------------------------------------------------------

    def set_build_info(self, version: str) -> None:
        def version_of(module: str) -> str:
            try:
                return __import__(module).__version__
            except Exception:  # not installed (a frontend-only install has no torch)
                return ""

        self.build_info.labels(
            version, platform.python_version(), version_of("torch"), version_of("transformers"), grpc.__version__
        ).set(1)

    # --- the worker ------------------------------------------------------------------------------

    def watch_engine(self, engine) -> None:
        """Observe ``engine``'s telemetry records and export its counters and gauges."""
        engine.telemetry.subscribe(self._record)
        backend = engine.sessions.backend
        for op in STORE_OPS:
            self.store_errors.labels(backend, op)  # the series exist (at 0) before the first failure
        self.registry.register(_EngineCollector(engine))

    def _record(self, item) -> None:
        if isinstance(item, TurnStats):
            self._observe_turn(item)
        elif isinstance(item, CacheBuilt):
            self._observe_build(item)
        elif isinstance(item, ChunkPrefilled):
            self.chunk_prefill.labels(item.model).observe(item.prefill_s)
            if item.prune_s:
                self.chunk_compress.labels(item.model).observe(item.prune_s)
        elif isinstance(item, MediaAppended):
            labels = (item.model, item.method)
            self.frames_appended.labels(*labels).inc(item.frames)
            self.segments_appended.labels(*labels).inc()
            self.append_kv_peak.labels(*labels).observe(item.kv_bytes_peak)
            self.visual_tokens.labels(*labels, "encoded").inc(item.visual_tokens_encoded or item.visual_tokens)
            self.visual_tokens.labels(*labels, "input").inc(item.visual_tokens)
        elif isinstance(item, Timed):
            labels = dict(item.labels)
            if item.name == "serialize":
                self.serialize.labels(labels["op"]).observe(item.seconds)
            elif item.name == "store":
                self.store_seconds.labels(labels["backend"], labels["op"]).observe(item.seconds)
        elif isinstance(item, Sized) and item.name == "record_bytes":
            self.record_bytes.labels(dict(item.labels)["kind"]).observe(item.value)
        elif isinstance(item, StoreFailure):
            self.store_errors.labels(item.backend, item.op).inc()

    def _observe_turn(self, stats: TurnStats) -> None:
        labels = (stats.model, stats.method, "first" if stats.first else "followup")
        timings = stats.timings
        if stats.generated_tokens:
            self.ttft.labels(*labels).observe(timings.ttft_s)
        itl = self.itl.labels(*labels)
        for gap in stats.token_gaps_s:
            itl.observe(gap)
        self.generation.labels(*labels).observe(timings.generate_s)
        self.turn_seconds.labels(*labels).observe(timings.total_s)
        self.prompt_tokens.labels(*labels).inc(stats.prompt_tokens)
        self.generated_tokens.labels(*labels).inc(stats.generated_tokens)
        self.queue_wait.labels(stats.model).observe(timings.queue_s)
        if stats.gpu_peak_bytes:
            self.gpu_peak.labels(stats.model).observe(stats.gpu_peak_bytes)

    def _observe_build(self, built: CacheBuilt) -> None:
        labels = (built.model, built.method)
        self.frame_decode.labels(built.model).observe(built.decode_s)
        self.vision_encode.labels(built.model).observe(built.encode_s)
        self.prefill.labels(*labels).observe(built.prefill_s)
        self.prune.labels(*labels).observe(built.prune_s)
        self.frames.labels(built.model).observe(built.frames)
        self.visual_tokens_per_request.labels(built.model).observe(built.visual_tokens)
        self.visual_tokens.labels(*labels, "encoded").inc(built.visual_tokens_encoded or built.visual_tokens)
        self.visual_tokens.labels(*labels, "input").inc(built.visual_tokens)
        self.visual_tokens.labels(*labels, "kept").inc(built.visual_tokens_kept)
        self.visual_tokens.labels(*labels, "recycled").inc(built.recycled_tokens)
        self.kv_bytes.labels(*labels, "full").observe(built.kv_bytes_full)
        self.kv_bytes.labels(*labels, "compressed").observe(built.kv_bytes_compressed)
        if built.kv_bytes_full:
            self.kv_ratio.labels(*labels).observe(built.kv_bytes_compressed / built.kv_bytes_full)

    # --- requests --------------------------------------------------------------------------------

    def interceptor(self, component: str) -> grpc.aio.ServerInterceptor:
        """Counts and times every call of our own services on a server (``component``: frontend|worker)."""
        return _RequestInterceptor(self, component)

    @asynccontextmanager
    async def _track(self, component: str, rpc: str, context: grpc.aio.ServicerContext):
        in_flight = self.in_flight.labels(component, rpc)
        in_flight.inc()
        started = time.perf_counter()
        code = "OK"
        try:
            yield
        except BaseException as error:
            code = _status_of(error, context)
            raise
        else:
            set_code = context.code()
            if set_code is not None:
                code = _name_of(set_code)
        finally:
            in_flight.dec()
            self.request_seconds.labels(component, rpc).observe(time.perf_counter() - started)
            self.requests.labels(component, rpc, code).inc()

    # --- serving ---------------------------------------------------------------------------------

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` on ``listen`` (``host:port``; port 0 picks a free one); returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        server = getattr(self, "_http", None)
        if server is not None:
            server.shutdown()
            server.server_close()


def _name_of(code) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # aio may hand back the integer value
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def _status_of(error: BaseException, context: grpc.aio.ServicerContext) -> str:
    import asyncio

    if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the caller went away
        return "CANCELLED"
    code = context.code()
    return _name_of(code) if code is not None else "UNKNOWN"


class _RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, component: str):
        self.metrics, self.component = metrics, component

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        rpc = own_rpc(handler_call_details)
        if handler is None or rpc is None:
            return handler
        return guarded(handler, lambda context: self.metrics._track(self.component, rpc, context))


class _EngineCollector(Collector):
    """The worker's counters and gauges, read at scrape time."""

    def __init__(self, engine):
        self.engine = engine
        self._stored: tuple[float, int | None] = (float("-inf"), None)

    def _stored_sessions(self) -> int | None:
        """Session count of the store, refreshed at most every STORED_COUNT_INTERVAL_S (a Redis SCAN)."""
        at, count = self._stored
        if time.monotonic() - at >= STORED_COUNT_INTERVAL_S:
            try:
                count = self.engine.sessions.store.session_count()
            except Exception as error:  # unreachable store: leave the gauge out rather than fail the scrape
                log.debug("session count failed: %s", error)
                count = None
            self._stored = (time.monotonic(), count)
        return count

    def collect(self) -> Iterable:
        engine, counters = self.engine, self.engine.counters
        sessions = engine.sessions
        backend = sessions.backend

        def counter(name: str, doc: str, labels: tuple[str, ...], rows: list[tuple[tuple[str, ...], float]]):
            family = CounterMetricFamily(name, doc, labels=labels)
            for values, value in rows:
                family.add_metric(values, value)
            return family

        def gauge(name: str, doc: str, value: float, labels: tuple[str, ...] = (), values: tuple[str, ...] = ()):
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        scheduler = engine.scheduler
        waiting = max(0, engine.queued_turns - engine.running_turns)
        yield gauge("videoqa_turns_queued", "Turns waiting for the worker's model", waiting)
        yield gauge("videoqa_turns_running", "Turns on the model now", engine.running_turns)
        yield counter("videoqa_decode_steps", "Batched decode steps", (), [((), scheduler.steps)])
        yield counter("videoqa_decode_rows", "Session-tokens decoded in batched steps", (), [((), scheduler.rows)])
        yield counter(
            "videoqa_compute_busy_seconds", "Seconds the compute thread was busy", (), [((), scheduler.busy_s)]
        )
        yield counter(
            "videoqa_compute_model_seconds",
            "Seconds of model work on the compute thread (forwards, compression, decode steps)",
            (),
            [((), scheduler.model_s)],
        )
        yield gauge("videoqa_kv_reserved_bytes", "KV bytes reserved by the running turns", scheduler.reserved_bytes)
        yield gauge(
            "videoqa_kv_budget_bytes", "KV bytes the running turns may reserve (0: no limit)", scheduler.kv_budget_bytes
        )
        yield counter(
            "videoqa_turns",
            "Turns ended, by outcome",
            ("outcome",),
            [((outcome,), counters[key]) for key, outcome in TURN_OUTCOMES.items()],
        )
        lookups = [((result,), counters[key]) for key, result in LOOKUP_RESULTS.items()]
        lookups.append(((f"hit-{backend}",), counters["lookup_store"]))
        yield counter("videoqa_session_lookups", "Follow-up session lookups, by result", ("result",), lookups)
        yield gauge("videoqa_sessions_active", "Sessions live in this worker's memory", sessions.hot_sessions)
        yield gauge("videoqa_sessions_active_bytes", "KV bytes of the sessions in memory", sessions.hot_bytes_used)
        stored = self._stored_sessions()
        if stored is not None:
            yield gauge("videoqa_sessions_stored", "Sessions in the session store", stored, ("backend",), (backend,))
        yield counter("videoqa_sessions_created", "Sessions stored", (), [((), counters["sessions_created"])])
        yield counter(
            "videoqa_sessions_deleted", "Sessions deleted by clients", (), [((), counters["sessions_deleted"])]
        )
        evicted = [(("hot", "capacity"), counters["hot_evicted"])]
        if hasattr(sessions.store, "expired_total"):
            evicted.append((("memory", "ttl"), sessions.store.expired_total))
        yield counter("videoqa_sessions_evicted", "Sessions dropped by a bound", ("tier", "reason"), evicted)
        info = GaugeMetricFamily(
            "videoqa_model_info", "Models this worker serves", labels=("model", "family", "revision", "dtype")
        )
        for model_id, lm in list(engine.models.items()):
            info.add_metric((model_id, lm.family, lm.revision, str(lm.dtype).removeprefix("torch.")), 1)
        yield info
        yield from _gpu_memory(engine)


def _gpu_memory(engine) -> Iterable:
    """Allocated, reserved and total CUDA memory per device the models use (nothing off CUDA)."""
    devices = sorted({str(lm.device) for lm in list(engine.models.values()) if lm.device.type == "cuda"})
    if not devices:
        return
    import torch

    allocated = GaugeMetricFamily("videoqa_gpu_memory_allocated_bytes", "CUDA memory allocated", labels=("device",))
    reserved = GaugeMetricFamily(
        "videoqa_gpu_memory_reserved_bytes", "CUDA memory reserved by the allocator", labels=("device",)
    )
    total = GaugeMetricFamily("videoqa_gpu_memory_total_bytes", "CUDA memory of the device", labels=("device",))
    for device in devices:
        allocated.add_metric((device,), torch.cuda.memory_allocated(device))
        reserved.add_metric((device,), torch.cuda.memory_reserved(device))
        total.add_metric((device,), torch.cuda.mem_get_info(device)[1])
    yield allocated
    yield reserved
    yield total
