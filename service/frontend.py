"""The public API: authenticate, check what can be checked without a model, route to a worker.

Workers do the semantic validation; the frontend enforces transport limits (upload size), picks
the session id of a new session, and forwards with session affinity. A worker that is down
(UNAVAILABLE before it sent anything) is skipped for the next in rendezvous order.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable

import grpc

from videoqa.internal.v1 import worker_pb2 as wpb
from videoqa.service import logcontext
from videoqa.service.auth import Authenticator, allow_all
from videoqa.service.errors import SHARED_DEPENDENCY_REASONS, abort, error_reason
from videoqa.service.routing import WorkerHandle, WorkerPool
from videoqa.service.upload import Upload, UploadBudget, read_upload, upload_messages
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.v1 import videoqa_pb2_grpc
from videoqa.worker.errors import InvalidInput, NotReady, SessionNotFound

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: Metadata a raw gRPC client may carry its idempotency key in (AskRequest.idempotency_key wins).
IDEMPOTENCY_METADATA = "x-idempotency-key"


class _Forwarded(Exception):
    """A worker's error status, to be passed on to the client unchanged."""

    def __init__(self, error: grpc.aio.AioRpcError):
        self.error = error


def new_session_id() -> str:
    return uuid.uuid4().hex


def _metadata_key(context: grpc.aio.ServicerContext) -> str:
    """The idempotency key a raw gRPC client may send as metadata instead of the request field."""
    return str(dict(context.invocation_metadata() or ()).get(IDEMPOTENCY_METADATA, ""))


def _worker_is_down(error: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE from the transport or a worker that cannot serve (loading, draining): try the
    next worker. Not when the worker answered that a dependency they all share is down (the
    session store): that goes to the client as it is, and the worker stays up."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return error_reason(error) not in SHARED_DEPENDENCY_REASONS


class FrontendServicer(videoqa_pb2_grpc.VideoQAServicer):
    def __init__(
        self,
        pool: WorkerPool,
        *,
        version: str,
        max_upload_bytes: int,
        max_images: int,
        authenticate: Authenticator = allow_all,
        max_buffered_upload_bytes: int = 1 << 30,
    ):
        self.pool = pool
        self.version = version
        self.max_upload_bytes = max_upload_bytes
        self.max_images = max_images
        self.uploads = UploadBudget(max(max_buffered_upload_bytes, max_upload_bytes))
        self.authenticate = authenticate
        self._description: wpb.WorkerDescription | None = None

    # --- helpers ---------------------------------------------------------------------------------

    def _context(self, context: grpc.aio.ServicerContext, session_id: str) -> wpb.CallContext:
        tenant = self.authenticate(context.invocation_metadata() or ())
        # The id RequestIds (service/logcontext.py) gave the call; without it, the client's or a new one.
        request_id = logcontext.request_id() or logcontext.new_request_id(context.invocation_metadata())
        logcontext.bind(request_id, session_id)
        return wpb.CallContext(tenant=tenant, session_id=session_id, request_id=request_id)

    @staticmethod
    def _check_session_id(session_id: str) -> None:
        if not session_id:
            raise InvalidInput("session_id is required", field="session_id")
        if not SESSION_ID.match(session_id):
            raise SessionNotFound(f"session {session_id[:64]!r} not found")

    async def _stream(
        self,
        key: str,
        context: grpc.aio.ServicerContext,
        start: Callable[[WorkerHandle, float | None], grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall],
    ) -> AsyncIterator[pb.AskResponse]:
        """Forward a server-streaming call, failing over while no response has arrived."""
        for worker in self.pool.order(key):
            call = start(worker, context.time_remaining())
            received = False
            try:
                async for response in call:
                    received = True
                    yield response
                return
            except grpc.aio.AioRpcError as error:
                if _worker_is_down(error) and not received:
                    log.warning("worker %s unavailable (%s); trying the next", worker.address, error.details())
                    worker.mark(False)
                    continue
                raise _Forwarded(error) from error
            finally:
                call.cancel()  # no-op once finished; stops the worker's turn if our caller went away
        raise NotReady("no worker is available", retry_after_s=2.0)

    async def _unary(self, key: str, context, invoke: Callable[[WorkerHandle, float | None], object]):
        for worker in self.pool.order(key):
            try:
                return await invoke(worker, context.time_remaining())
            except grpc.aio.AioRpcError as error:
                if _worker_is_down(error):
                    worker.mark(False)
                    continue
                raise _Forwarded(error) from error
        raise NotReady("no worker is available", retry_after_s=2.0)

    async def _fail(self, context, error: BaseException) -> None:
        if isinstance(error, _Forwarded):
            rpc = error.error
            await context.abort(rpc.code(), rpc.details() or "", trailing_metadata=tuple(rpc.trailing_metadata() or ()))
        await abort(context, error)

    async def _description_of_workers(self, context) -> wpb.WorkerDescription:
        if self._description is None:
            self._description = await self._unary(
                "describe", context, lambda w, t: w.stub.Describe(wpb.DescribeRequest(), timeout=t)
            )
        return self._description

    # --- RPCs ------------------------------------------------------------------------------------

    async def CreateSession(self, request_iterator, context):
        try:
            call_context = self._context(context, new_session_id())
            upload: Upload = await read_upload(
                request_iterator, max_bytes=self.max_upload_bytes, max_images=self.max_images, budget=self.uploads
            )

            def start(worker: WorkerHandle, timeout: float | None):
                def messages():
                    yield wpb.WorkerCreateSessionRequest(context=call_context)
                    for message in upload_messages(upload):
                        yield wpb.WorkerCreateSessionRequest(request=message)

                return worker.stub.CreateSession(messages(), timeout=timeout)

            try:
                async for response in self._stream(call_context.session_id, context, start):
                    yield response
            finally:
                self.uploads.release(upload.size)
        except Exception as error:
            await self._fail(context, error)

    async def AppendMedia(self, request_iterator, context):
        try:
            self.authenticate(context.invocation_metadata() or ())  # before reading any media
            upload: Upload = await read_upload(
                request_iterator, max_bytes=self.max_upload_bytes, max_images=self.max_images, budget=self.uploads
            )
            try:
                session_id = upload.spec.session_id
                self._check_session_id(session_id)
                call_context = self._context(context, session_id)
                if not upload.spec.idempotency_key:
                    upload.spec.idempotency_key = _metadata_key(context)

                def start(worker: WorkerHandle, timeout: float | None):
                    def messages():
                        yield wpb.WorkerAppendRequest(context=call_context)
                        for message in upload_messages(upload):
                            yield wpb.WorkerAppendRequest(request=message)

                    return worker.stub.AppendMedia(messages(), timeout=timeout)

                async for response in self._stream(session_id, context, start):
                    yield response
            finally:
                self.uploads.release(upload.size)
        except Exception as error:
            await self._fail(context, error)

    async def Ask(self, request: pb.AskRequest, context):
        try:
            self._check_session_id(request.session_id)
            call_context = self._context(context, request.session_id)
            if not request.idempotency_key:
                request.idempotency_key = _metadata_key(context)
            forwarded = wpb.WorkerAskRequest(context=call_context, request=request)
            async for response in self._stream(
                request.session_id, context, lambda w, t: w.stub.Ask(forwarded, timeout=t)
            ):
                yield response
        except Exception as error:
            await self._fail(context, error)

    async def GetSession(self, request: pb.GetSessionRequest, context):
        try:
            self._check_session_id(request.session_id)
            forwarded = wpb.WorkerSessionRequest(context=self._context(context, request.session_id))
            return await self._unary(request.session_id, context, lambda w, t: w.stub.GetSession(forwarded, timeout=t))
        except Exception as error:
            await self._fail(context, error)

    async def DeleteSession(self, request: pb.DeleteSessionRequest, context):
        try:
            self._check_session_id(request.session_id)
            forwarded = wpb.WorkerSessionRequest(context=self._context(context, request.session_id))
            return await self._unary(
                request.session_id, context, lambda w, t: w.stub.DeleteSession(forwarded, timeout=t)
            )
        except Exception as error:
            await self._fail(context, error)

    async def ListModels(self, request, context):
        try:
            self.authenticate(context.invocation_metadata() or ())
            return pb.ListModelsResponse(models=(await self._description_of_workers(context)).models)
        except Exception as error:
            await self._fail(context, error)

    async def ListMethods(self, request, context):
        try:
            self.authenticate(context.invocation_metadata() or ())
            description = await self._description_of_workers(context)
            return pb.ListMethodsResponse(methods=description.methods, reductions=description.reductions)
        except Exception as error:
            await self._fail(context, error)

    async def GetServerInfo(self, request, context):
        try:
            self.authenticate(context.invocation_metadata() or ())
            info = pb.ServerInfo()
            info.CopyFrom((await self._description_of_workers(context)).info)
            info.version = self.version
            info.workers = len(self.pool.workers)
            info.limits.max_upload_bytes = min(info.limits.max_upload_bytes, self.max_upload_bytes)
            info.limits.max_images = min(info.limits.max_images, self.max_images)
            return info
        except Exception as error:
            await self._fail(context, error)
