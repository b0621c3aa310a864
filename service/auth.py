"""Who is calling: API keys mapped to tenants.

An authenticator takes the call's invocation metadata and returns the caller's tenant identity,
or raises :class:`Unauthenticated`. Sessions belong to the tenant that created it (the worker
refuses another tenant's session with PERMISSION_DENIED). :func:`allow_all` trusts everyone as
the single tenant ``default`` (the explicit insecure mode for local development).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from videoqa.worker.errors import SessionForbidden, VideoQAError

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str | bytes]]
Authenticator = Callable[[Metadata], str]

#: Keys shorter than this are refused when the key file is read (they can be guessed).
MIN_KEY_CHARS = 16


class Unauthenticated(VideoQAError):
    status = "UNAUTHENTICATED"


PermissionDenied = SessionForbidden


def allow_all(metadata: Metadata) -> str:
    """Everyone is the tenant ``default``."""
    return "default"


def bearer_token(metadata: Metadata) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, if there is one."""
    for key, value in metadata:
        if key.lower() == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class ApiKeys:
    """Bearer API keys, each naming its tenant. Every call compares the token's SHA-256 against
    every key's in constant time, so the time taken reveals neither which key matched, nor how much
    of one did, nor a key's length."""

    def __init__(self, keys_by_tenant: dict[str, list[str]]):
        self._keys: list[tuple[bytes, str]] = []
        for tenant, keys in keys_by_tenant.items():
            if not tenant or not isinstance(tenant, str):
                raise ValueError("tenant names must be non-empty strings")
            for key in keys:
                if not isinstance(key, str) or len(key) < MIN_KEY_CHARS:
                    raise ValueError(
                        f"tenant {tenant!r}: API keys must be strings of at least {MIN_KEY_CHARS} characters"
                    )
                self._keys.append((_digest(key), tenant))
        if not self._keys:
            raise ValueError("the API key file names no keys")
        if len({key for key, _ in self._keys}) != len(self._keys):
            raise ValueError("an API key is listed twice")

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """Read ``{"tenant": "key" | ["key", ...], ...}`` (JSON)."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the API key file {path}: {error}") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object mapping tenants to keys")
        return cls({tenant: [keys] if isinstance(keys, str) else list(keys) for tenant, keys in raw.items()})

    @property
    def tenants(self) -> set[str]:
        return {tenant for _, tenant in self._keys}

    def __call__(self, metadata: Metadata) -> str:
        token = bearer_token(metadata)
        if token is None:
            raise Unauthenticated("missing credentials: send the metadata `authorization: Bearer <API key>`")
        presented = _digest(token)
        tenant = None
        for key, owner in self._keys:
            if hmac.compare_digest(presented, key) and tenant is None:
                tenant = owner
        if tenant is None:
            raise Unauthenticated("invalid API key")
        return tenant


class ApiKeyFile:
    """:class:`ApiKeys` read from a file and re-read when it changes (checked at most every
    ``interval_s``), so keys rotate without a restart (a Kubernetes Secret mounted as a directory
    is updated in place). A changed file that does not parse keeps the previous keys, logged."""

    def __init__(self, path: str | Path, interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.path, self.interval_s, self._clock = Path(path), interval_s, clock
        self.keys = ApiKeys.from_file(self.path)  # a bad file at start is an error
        self._stamp = self._stat()
        self._checked = clock()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[float, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self.interval_s:
            return
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp is None or stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                self.keys = ApiKeys.from_file(self.path)
                log.info("API keys reloaded from %s (%d tenants)", self.path, len(self.keys.tenants))
            except ValueError as error:
                log.error(
                    "API key file %s changed but cannot be used (%s); keeping the previous keys", self.path, error
                )

    def __call__(self, metadata: Metadata) -> str:
        self._refresh()
        return self.keys(metadata)
