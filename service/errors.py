"""Map domain errors to gRPC statuses with ``google.rpc`` details, in one place."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from videoqa.worker.errors import VideoQAError

log = logging.getLogger(__name__)

DOMAIN = "videoqa.dev"


#: ErrorInfo reasons of failures every worker shares (a retry on another worker cannot help).
SHARED_DEPENDENCY_REASONS = frozenset({"STORE_UNAVAILABLE"})


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ``ErrorInfo.reason`` of a status from one of our servers ("" when it carries none)."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == DOMAIN:
                return info.reason
    return ""


def to_status(error: VideoQAError) -> grpc.Status:
    """A ``grpc.Status`` carrying ErrorInfo, plus BadRequest / RetryInfo where they apply."""
    code = getattr(code_pb2, error.status)
    details = [error_details_pb2.ErrorInfo(reason=error.reason or type(error).__name__, domain=DOMAIN)]
    if error.field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code, message=error.message)
    for detail in details:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """Abort the RPC with the status of ``error``; unknown errors become INTERNAL (and are logged)."""
    if isinstance(error, VideoQAError):
        await context.abort_with_status(to_status(error))
    log.error("internal error", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")
