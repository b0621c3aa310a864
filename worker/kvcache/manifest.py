"""A stored session's manifest: who owns it, what built it, and its records, validated strictly.

The manifest is the one small JSON document a store writes last for every change (the records'
chunks go first), so a reader never sees half a session. It lists the records (the prefix, then
one delta per stored turn or appended segment) with their sizes and checksums, and for each delta
the idempotency key of the call that stored it and what that call returned (opaque text the
session layer encodes), so that a retried call can be answered from it instead of running again.

Everything read back is checked: a manifest whose turn count disagrees with its records, whose
sizes do not add up, or whose fields have the wrong types is damaged (``CorruptSession``:
DATA_LOSS), never retried; one written by another format version is ``IncompatibleSession``.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, replace

from videoqa.worker.errors import CorruptSession, IncompatibleSession
from videoqa.worker.kvcache.serde import FORMAT_VERSION

#: Idempotency keys: what a client may send (the SDK sends 32 hex digits).
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RECORD_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Owner:
    """Who a session belongs to and what built it (written once, at creation)."""

    tenant: str
    model_id: str
    revision: str
    created_at: float


@dataclass(frozen=True)
class RecordMeta:
    """One stored record: ``chunks`` values of at most the store's chunk size, ``size`` bytes in
    all, with their SHA-256. ``key``: the idempotency key of the call that stored it ("" if
    none); ``outcome``: what that call returned, as the session layer encoded it."""

    id: str
    chunks: int
    size: int
    sha256: str
    key: str = ""
    outcome: str = ""


def split_record(
    blob: bytes, chunk_bytes: int, key: str = "", outcome: str = "", digest: str | None = None
) -> tuple[RecordMeta, list[memoryview]]:
    """A new record of ``blob``: its metadata and its chunks (views of ``blob``, not copies).
    ``digest``: its SHA-256 when the caller computes it (else computed here)."""
    view = memoryview(blob)
    chunks = [view[i : i + chunk_bytes] for i in range(0, len(blob), chunk_bytes)] or [view[:0]]
    sha256 = digest if digest is not None else hashlib.sha256(blob).hexdigest()
    return RecordMeta(uuid.uuid4().hex, len(chunks), len(blob), sha256, key, outcome), chunks


def assemble(meta: RecordMeta, chunks: list[bytes | None]) -> bytes:
    """The record's bytes from its chunks, checked against its size and checksum."""
    if any(chunk is None for chunk in chunks):
        raise CorruptSession("a chunk of the stored session is missing")
    blob = b"".join(chunks)  # type: ignore[arg-type]
    if len(blob) != meta.size or hashlib.sha256(blob).hexdigest() != meta.sha256:
        raise CorruptSession("a chunk of the stored session is damaged or truncated")
    return blob


@dataclass(frozen=True)
class Manifest:
    """A session as stored: ``version`` delta records after the prefix (``records[0]``)."""

    session_id: str
    owner: Owner
    format_version: int
    version: int
    size: int
    records: tuple[RecordMeta, ...]

    @classmethod
    def new(cls, session_id: str, owner: Owner, prefix: RecordMeta) -> Manifest:
        return cls(session_id, owner, FORMAT_VERSION, 0, prefix.size, (prefix,))

    def appended(self, meta: RecordMeta) -> Manifest:
        """The manifest after one more delta record."""
        return replace(self, version=self.version + 1, size=self.size + meta.size, records=(*self.records, meta))

    def holds(self, record_id: str) -> bool:
        return any(meta.id == record_id for meta in self.records)

    def stored_by(self, key: str) -> RecordMeta | None:
        """The delta record a call with idempotency key ``key`` stored, if any."""
        if not key:
            return None
        return next((meta for meta in self.records[1:] if meta.key == key), None)

    # --- JSON ------------------------------------------------------------------------------------

    def to_json(self) -> str:
        o = self.owner
        return json.dumps(
            {
                "session_id": self.session_id,
                "tenant": o.tenant,
                "model_id": o.model_id,
                "revision": o.revision,
                "created_at": o.created_at,
                "format_version": self.format_version,
                "version": self.version,
                "size": self.size,
                "records": [
                    {
                        "id": m.id,
                        "chunks": m.chunks,
                        "size": m.size,
                        "sha256": m.sha256,
                        "key": m.key,
                        "outcome": m.outcome,
                    }
                    for m in self.records
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        """Parse and check a stored manifest (``CorruptSession`` when damaged, ``IncompatibleSession``
        when written by another format version)."""
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise CorruptSession("the stored session's manifest is unreadable") from error
        if not isinstance(data, dict):
            raise CorruptSession("the stored session's manifest is malformed")
        if data.get("format_version") != FORMAT_VERSION:
            raise IncompatibleSession(
                f"stored session has format version {data.get('format_version')}; this server reads {FORMAT_VERSION}"
            )
        try:
            owner = Owner(
                _typed(data, "tenant", str),
                _typed(data, "model_id", str),
                _typed(data, "revision", str),
                float(_typed(data, "created_at", (int, float))),
            )
            records = tuple(_record(item) for item in _typed(data, "records", list))
            manifest = cls(
                _typed(data, "session_id", str),
                owner,
                FORMAT_VERSION,
                _typed(data, "version", int),
                _typed(data, "size", int),
                records,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptSession(f"the stored session's manifest is malformed ({error})") from error
        if not records or manifest.version != len(records) - 1:
            raise CorruptSession(
                f"the stored session's manifest counts {manifest.version} turns but lists {len(records) - 1} records"
            )
        if manifest.size != sum(meta.size for meta in records):
            raise CorruptSession("the stored session's manifest size disagrees with its records")
        if len({meta.id for meta in records}) != len(records):
            raise CorruptSession("the stored session's manifest lists a record twice")
        return manifest


def owner_tenant(raw: bytes | str) -> str | None:
    """The tenant a stored manifest names, read leniently (any format version); None when the
    manifest is too damaged to say. For deleting: the owner may always delete."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    tenant = data.get("tenant") if isinstance(data, dict) else None
    return tenant if isinstance(tenant, str) else None


def _typed(data: dict, name: str, kind):
    value = data[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name} has the wrong type")
    return value


def _record(item) -> RecordMeta:
    if not isinstance(item, dict):
        raise TypeError("a record is not an object")
    meta = RecordMeta(
        _typed(item, "id", str),
        _typed(item, "chunks", int),
        _typed(item, "size", int),
        _typed(item, "sha256", str),
        item.get("key", "") if isinstance(item.get("key", ""), str) else "",
        item.get("outcome", "") if isinstance(item.get("outcome", ""), str) else "",
    )
    if not _RECORD_ID.match(meta.id) or meta.size < 0 or meta.chunks < 1 or len(meta.sha256) != 64:
        raise ValueError("a record's id, size, chunk count or checksum is invalid")
    return meta
