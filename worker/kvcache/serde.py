"""Tensors + header ↔ bytes. No Redis, no sessions: a versioned, checksummed envelope.

Layout of a blob::

    MAGIC (8 bytes) | header length (4 bytes, big endian) | header (UTF-8 JSON) | safetensors payload

The header carries ``format_version`` and ``checksum``: the SHA-256 of the header (with an empty
checksum) followed by the payload, so a flipped byte anywhere, a truncation or a splice is
detected before anything is used. Tensors travel as safetensors (never pickle). Optional lossy
storage: ``int8`` per-channel quantization of K/V (off by default), with its error measured in
the tests.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from videoqa.worker.errors import CorruptSession, IncompatibleSession

MAGIC = b"VQAKV\x00\x01\n"
FORMAT_VERSION = 1
_MAX_HEADER = 64 << 20


def _digest(header: dict[str, Any], payload: bytes) -> str:
    body = json.dumps({**header, "checksum": ""}, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(body + payload).hexdigest()


def encode(header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Envelope ``tensors`` (moved to CPU, made contiguous) with ``header`` and a checksum."""
    payload = save_tensors({name: t.detach().contiguous().cpu() for name, t in tensors.items()})
    full = {**header, "format_version": FORMAT_VERSION}
    full["checksum"] = _digest(full, payload)
    raw = json.dumps(full, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(raw)) + raw + payload


def decode(blob: bytes) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Verify and open a blob. Raises ``CorruptSession`` (DATA_LOSS) on any damage and
    ``IncompatibleSession`` (FAILED_PRECONDITION) for another format version."""
    if len(blob) < len(MAGIC) + 4 or blob[: len(MAGIC)] != MAGIC:
        raise CorruptSession("stored session is damaged (bad magic)")
    (size,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if size > _MAX_HEADER or start + size > len(blob):
        raise CorruptSession("stored session is damaged (bad header length)")
    try:
        header = json.loads(blob[start : start + size])
    except ValueError as error:
        raise CorruptSession("stored session is damaged (unreadable header)") from error
    if not isinstance(header, dict):
        raise CorruptSession("stored session is damaged (header is not an object)")
    payload = blob[start + size :]
    if header.get("checksum") != _digest(header, payload):
        raise CorruptSession("stored session failed its checksum")
    if header.get("format_version") != FORMAT_VERSION:
        raise IncompatibleSession(
            f"stored session has format version {header.get('format_version')}; this server reads {FORMAT_VERSION}"
        )
    try:
        tensors = load_tensors(payload)
    except Exception as error:  # safetensors raises its own error types
        raise CorruptSession("stored session is damaged (unreadable tensors)") from error
    return header, tensors


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel symmetric int8: ``x`` [..., S, D] → (int8 [..., S, D], scale [..., 1, D]).

    One scale per head and channel over the sequence axis (K/V outliers are per channel)."""
    scale = x.float().abs().amax(dim=-2, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(x.float() / scale).clamp(-127, 127).to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale).to(dtype)
