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

from typing import Any

import torch

from videoqa.worker.errors import CorruptSession
from videoqa.worker.model.state import CacheExtension

#: Extension classes by ``kind``, for restoring stored sessions.
KINDS: dict[str, type[CacheExtension]] = {}


def extension_kind(cls: type[CacheExtension]) -> type[CacheExtension]:
    """Class decorator: make ``cls`` restorable from session records by its ``kind``."""
    KINDS[cls.kind] = cls
    return cls


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
