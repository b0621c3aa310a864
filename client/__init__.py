"""Python client SDK of the videoqa service (``videoqa.v1.VideoQA``).

Needs only grpcio, protobuf and tqdm: no torch, transformers, decord, numpy or pydantic.

- :class:`VideoQAClient` / :class:`Session`: blocking client (``create_session``, ``ask``, and
  ``Session.append`` / ``append_media`` to add media to a session, e.g. a live stream's next part).
- :class:`AsyncVideoQAClient` / :class:`AsyncSession`: asyncio client on ``grpc.aio``.
- Dataclasses for options (:class:`FrameSampling`, :class:`Pruning`, :class:`Generation`,
  :class:`Timeouts`), streamed events (:class:`Progress`, :class:`SessionCreated`,
  :class:`Token`, :class:`TurnStats`) and descriptions (:class:`SessionInfo`,
  :class:`ModelInfo`, :class:`MethodInfo`, :class:`ServerInfo`).
- Typed exceptions, one per gRPC status code, under :class:`VideoQAError`.
"""

from __future__ import annotations

from . import errors
from ._common import tls_credentials
from .aio import AsyncSession, AsyncVideoQAClient
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    VideoQAError,
    from_rpc_error,
)
from .sync import Session, VideoQAClient
from .types import (
    STAGES,
    Answer,
    Event,
    FrameSampling,
    Generation,
    Limits,
    MethodInfo,
    MethodParam,
    ModelInfo,
    Progress,
    Pruning,
    Reduction,
    SampledFrames,
    ServerInfo,
    SessionCreated,
    SessionInfo,
    Timeouts,
    Timings,
    Token,
    TurnStats,
)

__all__ = [
    "STAGES",
    "Aborted",
    "AlreadyExists",
    "Answer",
    "AsyncSession",
    "AsyncVideoQAClient",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "Event",
    "FailedPrecondition",
    "FrameSampling",
    "Generation",
    "Internal",
    "InvalidArgument",
    "Limits",
    "MethodInfo",
    "MethodParam",
    "ModelInfo",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Progress",
    "Pruning",
    "Reduction",
    "ResourceExhausted",
    "SampledFrames",
    "ServerInfo",
    "Session",
    "SessionCreated",
    "SessionInfo",
    "Timeouts",
    "Timings",
    "Token",
    "TurnStats",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "VideoQAClient",
    "VideoQAError",
    "errors",
    "from_rpc_error",
    "tls_credentials",
]
