"""State a pruning method keeps beside a session's KV cache, carried everywhere the cache goes.

Most methods finish their work at the end of the prefill: the pruned cache is all a session needs.
Two do not: ``hae`` keeps scoring cache entries while the answer is decoded and moves entries in
and out of a recycle bin (:mod:`videoqa.worker.pruning.decode_bin`), and ``retentive_kv`` keeps a
linear-attention memory of the tokens it evicted, read at every later step
(:mod:`videoqa.worker.pruning.memory`). Their state is a :class:`CacheExtension` on the session's
``ConversationState``; the generator, the batched decoder, checkpoints (cancelled turns roll it
back) and the session records (Redis) all handle it through this one interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from videoqa.worker.errors import CorruptSession

if TYPE_CHECKING:
    from videoqa.worker.model.generate import ConversationState
    from videoqa.worker.pruning.attention import DecodeObserver, RetainedLayer

#: Extension classes by ``kind``, for restoring stored sessions.
KINDS: dict[str, type[CacheExtension]] = {}


def extension_kind(cls: type[CacheExtension]) -> type[CacheExtension]:
    """Class decorator: make ``cls`` restorable from session records by its ``kind``."""
    KINDS[cls.kind] = cls
    return cls


class CacheExtension(ABC):
    """Per-session state beside the cache (see the module docstring). Defaults: no effect."""

    #: Stable name in session records.
    kind: ClassVar[str]
    #: Whether the state changes after the prefill (then every turn record carries it).
    mutable: ClassVar[bool] = False
    #: Whether it rewrites cache entries (not only appends): checkpoints then keep the tensors.
    rewrites_cache: ClassVar[bool] = False

    def memory(self, layer: int) -> RetainedLayer | None:
        """The layer's retained memory for this session (batch dimension 1), if any."""
        return None

    def observers(self) -> dict[int, DecodeObserver]:
        """Callbacks per layer that see every one-token step of this session."""
        return {}

    def after_token(self, state: ConversationState) -> None:  # noqa: B027  (optional hook)
        """Called after each decoded token has been fed (the cache holds it)."""

    def reread(self, state: ConversationState, count: int) -> bool:
        """Called after a multi-token input (a question opening a turn) of ``count`` tokens has been
        fed. True: the extension changed the cache for it and removed its ``count`` entries from
        every layer, and the caller feeds it again (the generator does)."""
        return False

    def counts(self) -> tuple[int, int] | None:
        """(visual entries in the active cache, entries held aside) when they differ from what
        the prefill left; ``None`` to report the prefill's counts."""
        return None

    def nbytes(self) -> int:
        """Bytes the extension keeps on the model's device (counted with the cache)."""
        return 0

    @property
    def rewritten(self) -> bool:
        """Whether cache entries were moved (not only appended) since the session was last stored:
        its next record must then hold the whole cache, not a delta."""
        return False

    def mark_saved(self) -> None:  # noqa: B027  (optional hook)
        """The session was just stored."""

    @abstractmethod
    def checkpoint(self) -> Any:
        """What :meth:`rollback` needs to undo everything after this point."""

    @abstractmethod
    def rollback(self, token: Any) -> None: ...

    @abstractmethod
    def to_record(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A JSON-able header and named tensors (safetensors) that :meth:`from_record` reads."""

    @classmethod
    @abstractmethod
    def from_record(
        cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device
    ) -> CacheExtension: ...


def restore_extension(
    header: dict[str, Any] | None, tensors: dict[str, torch.Tensor], device: torch.device
) -> CacheExtension | None:
    """The extension a record describes (``header`` None: the session has none)."""
    if header is None:
        return None
    from videoqa.worker.pruning import decode_bin, memory  # noqa: F401  (register their kinds)

    kind = header.get("kind")
    if kind not in KINDS:
        raise CorruptSession(f"stored session has an unknown cache extension {kind!r}")
    return KINDS[kind].from_record(header, tensors, device)
