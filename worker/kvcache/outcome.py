"""What a stored turn returned, kept in the manifest so that a retried call gets it back.

A call that stores a turn (a question's answer, or media appended) carries an idempotency key;
its record in the manifest keeps the key and this outcome: the answer's token ids (the RPC side
turns them into the same text as the first time) and the turn's stats, or nothing for appended
media (its reply is the session's description, read from the session). ``request`` is a digest
of what was asked, so that a key reused for a different question is refused, not answered with
another question's answer. JSON with checked types: nothing here is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from videoqa.worker.errors import CorruptSession
from videoqa.worker.types import FinishReason, Timings, TurnStats


@dataclass(frozen=True)
class StoredOutcome:
    #: ``"answer"`` (a question's) or ``"segment"`` (media appended).
    kind: str
    #: Digest of the request (``request_digest``).
    request: str
    tokens: tuple[int, ...] = ()
    stats: TurnStats | None = None

    def to_json(self) -> str:
        stats = None
        if self.stats is not None:
            stats = dataclasses.asdict(self.stats)
            stats["finish_reason"] = self.stats.finish_reason.value
            stats["token_gaps_s"] = []  # per-token timing is not worth keeping
        return json.dumps({"kind": self.kind, "request": self.request, "tokens": list(self.tokens), "stats": stats})

    @classmethod
    def from_json(cls, raw: str) -> StoredOutcome:
        try:
            data = json.loads(raw)
            tokens = tuple(int(t) for t in data["tokens"])
            stats = data["stats"]
            if stats is not None:
                timings = Timings(**{k: float(v) for k, v in stats.pop("timings").items()})
                stats["finish_reason"] = FinishReason(stats["finish_reason"])
                stats = TurnStats(**stats, timings=timings)
            return cls(str(data["kind"]), str(data["request"]), tokens, stats)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CorruptSession("the stored outcome of a turn is unreadable") from error


def request_digest(*parts: str) -> str:
    """A short digest of a request's defining parts (the question, or the media's spec)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
