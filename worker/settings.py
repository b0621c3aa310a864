"""Worker configuration: typed, bounded, documented; read from ``VIDEOQA_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20


class WorkerSettings(BaseSettings):
    """Everything a worker needs to run; every field has a default and bounds."""

    model_config = SettingsConfigDict(env_prefix="VIDEOQA_", extra="ignore", use_attribute_docstrings=True)

    models: list[str] = Field(default=["videoqa-demo"], min_length=1)
    """Model ids to load (``videoqa-demo``, ``tiny-*``, a local directory, or a hub id); the first
    is the default."""
    device: str = "cpu"
    """Torch device of the models, e.g. ``cpu`` or ``cuda:0``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights and KV cache dtype."""
    max_upload_bytes: int = Field(default=256 * MiB, ge=1024, le=1 << 34)
    """Largest accepted upload; larger ones are RESOURCE_EXHAUSTED."""
    max_buffered_upload_bytes: int = Field(default=1 << 30, ge=1024, le=1 << 36)
    """Bytes of uploads held in memory at once across all calls; beyond, RESOURCE_EXHAUSTED."""
    max_frames: int = Field(default=64, ge=1, le=4096)
    """Most frames one request (an upload, or media appended to a session) may sample."""
    max_session_frames: int = Field(default=4096, ge=1, le=1 << 20)
    """Most frames a session may hold over all its media; with a cap on visual entries
    (``max_visual_tokens``) its KV stays bounded whatever this is."""
    prefill_chunk_frames: int = Field(default=32, ge=0, le=1 << 16)
    """Frames per prefill chunk (rounded down to whole temporal patches, at least one): between
    chunks the other sessions' answers take a decode step, and a progressive pruning method
    compresses what it holds. 0: a video is prefilled in one forward."""
    prefill_chunk_tokens: int = Field(default=4096, ge=0, le=1 << 24)
    """Most visual tokens in one prefill chunk (0: no bound beyond the frames); a chunk always
    holds at least one temporal patch."""
    prefill_step_tokens: int = Field(default=512, ge=0, le=1 << 24)
    """Most prompt tokens in one forward of a prefill chunk (0: a chunk in one forward): other
    sessions' answers take a decode step between these forwards, so a running answer waits for
    one of them rather than a whole chunk; compression still happens after the whole chunk.
    Shorter forwards cost time to first token where small matrix products are slower (CPU:
    forwards of 256 tokens 1.1-1.2x, of 64 tokens 1.7x; docs/benchmarks.md)."""
    prefill_slack: float = Field(default=2.0, ge=1.0, le=16.0)
    """Between the chunks of a prefill, a progressive method may keep this many times the visual
    entries the prefill's final budget (or cap) allows; the last chunk compresses to exactly the
    budget: the KV a prefill holds is at most slack x the kept entries plus one chunk. 1 holds the
    least; 2 (the default) lets later steps choose among more of the video, which keeps progressive
    accuracy at one-shot's (docs/pruning.md, docs/quality.md)."""
    max_images: int = Field(default=512, ge=1, le=100_000)
    """Most images an image-sequence upload may contain."""
    default_frames: int = Field(default=8, ge=1, le=4096)
    """Frames sampled when a request names neither a count nor an fps."""
    max_resolution: int = Field(default=448, ge=28, le=4096)
    """Longest side of a frame in pixels, and the default when a request asks for none."""
    max_question_chars: int = Field(default=4000, ge=1, le=1_000_000)
    """Longest accepted question."""
    max_new_tokens: int = Field(default=1024, ge=1, le=65536)
    """Most tokens one answer may generate."""
    default_max_new_tokens: int = Field(default=128, ge=1, le=65536)
    """Answer length when a request names none."""
    decode_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """Longest a media decode may take before it is abandoned (INVALID_ARGUMENT)."""
    max_sessions: int = Field(default=1024, ge=1, le=1_000_000)
    """Sessions kept in memory at once; beyond this, new sessions are RESOURCE_EXHAUSTED."""
    session_ttl_s: float = Field(default=3600.0, gt=0, le=30 * 86400)
    """Idle time after which a session expires (NOT_FOUND)."""
    max_queued_turns: int = Field(default=64, ge=1, le=100_000)
    """Turns admitted to a worker (waiting or running) beyond this are refused with
    RESOURCE_EXHAUSTED and a retry hint."""
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    """Most sessions decoded together in one batched step."""
    io_threads: int = Field(default=4, ge=1, le=256)
    """Threads that run a turn's I/O stages (session restore and save, with their (de)serialisation;
    media preprocessing), off the compute thread and off the event loop."""
    kv_budget_bytes: int = Field(default=8 << 30, ge=0, le=1 << 44)
    """KV bytes the running turns may reserve together (their sessions' caches plus the answers);
    a turn that does not fit waits (0: no limit). One turn always runs, whatever its size."""

    # --- session storage -------------------------------------------------------------------------
    redis_url: str | None = None
    """Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS); ``redis+cluster://host:port`` (or
    ``rediss+cluster://``) for a Redis Cluster, any node as the seed; ``redis+sentinel://host:26379[,…]/service[/db]``
    for the master Redis Sentinel names; unset keeps sessions in this process."""
    redis_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """How long one Redis call may take before it counts as failed (then a write is read back)."""
    redis_replica_acks: int = Field(default=0, ge=0, le=8)
    """Replicas that must acknowledge a session write (Redis ``WAIT``) before the turn counts as
    stored; with 1 or more a master's failure loses no acknowledged turn. 0: the master's reply."""
    redis_username: str | None = None
    """Redis ACL user name."""
    redis_password: SecretStr | None = None
    """Redis password (or the ACL user's)."""
    redis_ca_certs: str | None = None
    """CA bundle that signs the Redis server's TLS certificate (with ``rediss://``)."""
    max_session_bytes: int = Field(default=2 << 30, ge=1024, le=1 << 40)
    """Largest stored session (prefix plus every turn); beyond, RESOURCE_EXHAUSTED."""
    store_chunk_bytes: int = Field(default=8 << 20, ge=1024, le=256 << 20)
    """Size of the chunks a stored record is split into (Redis strings stay far below 512 MiB)."""
    hot_tier_bytes: int = Field(default=4 << 30, ge=0, le=1 << 40)
    """KV bytes of live sessions this worker keeps in memory (LRU) in front of the store."""
    lock_lease_s: float = Field(default=10.0, gt=0, le=3600)
    """Lease of a session's turn lock, renewed every third of it while the turn runs; a lock left by a
    worker that died (or lost Redis) frees itself after this long."""
    storage_quantization: Literal["none", "int8"] = "none"
    """Lossy int8 per-channel storage of stored K/V (off by default)."""
