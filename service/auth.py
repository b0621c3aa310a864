"""Who is calling: the hook point for authentication.

An authenticator takes the call's invocation metadata and returns the caller's tenant identity,
or raises ``Unauthenticated`` / ``PermissionDenied``. Sessions belong to the tenant that created
them. The default trusts everyone as the single tenant ``default`` (local development).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from videoqa.worker.errors import VideoQAError

Metadata = Sequence[tuple[str, str | bytes]]
Authenticator = Callable[[Metadata], str]


class Unauthenticated(VideoQAError):
    status = "UNAUTHENTICATED"


class PermissionDenied(VideoQAError):
    status = "PERMISSION_DENIED"


def allow_all(metadata: Metadata) -> str:
    """Everyone is the tenant ``default``."""
    return "default"
