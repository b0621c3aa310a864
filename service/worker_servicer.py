"""The worker's internal gRPC API: proto in, engine call, proto out."""

from __future__ import annotations

import time

import grpc

from videoqa.internal.v1 import worker_pb2 as wpb
from videoqa.internal.v1 import worker_pb2_grpc
from videoqa.service import convert, logcontext
from videoqa.service.errors import abort
from videoqa.service.upload import UploadBudget, read_upload
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.worker.engine import AppendRequest, CreateRequest, Engine, TurnControl
from videoqa.worker.errors import InvalidInput, NotReady
from videoqa.worker.types import MediaKind


def control_for(context: grpc.aio.ServicerContext) -> TurnControl:
    remaining = context.time_remaining()
    return TurnControl(None if remaining is None else time.monotonic() + remaining)


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, engine: Engine, version: str):
        self.engine = engine
        self.version = version
        settings = engine.settings
        self.uploads = UploadBudget(max(settings.max_buffered_upload_bytes, settings.max_upload_bytes))

    async def _upload(self, request_iterator):
        """The call context and the upload that follows it (context first, then the public stream)."""
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "context":
            raise InvalidInput("the first message must carry the call context")
        logcontext.bind(first.context.request_id, first.context.session_id)

        async def requests():
            async for message in request_iterator:
                if message.WhichOneof("payload") != "request":
                    raise InvalidInput("the call context may only be sent once")
                yield message.request

        limits = self.engine.settings
        upload = await read_upload(
            requests(), max_bytes=limits.max_upload_bytes, max_images=limits.max_images, budget=self.uploads
        )
        return first.context, upload

    async def CreateSession(self, request_iterator, context):
        try:
            call, upload = await self._upload(request_iterator)
            spec = upload.spec
            request = CreateRequest(
                tenant=call.tenant,
                session_id=call.session_id,
                model=spec.model,
                media_kind=upload.kind,
                payload=upload.payload,
                sampling=convert.sampling_from_pb(spec.sampling),
                pruning=convert.pruning_from_pb(spec.pruning),
                question=spec.question or None,
                generation=convert.generation_from_pb(spec.generation),
                image_fps=spec.image_fps if upload.kind == MediaKind.IMAGES else 0.0,
                upload_s=upload.seconds,
            )
            try:
                async for event in self.engine.create_session(request, control_for(context)):
                    yield convert.event_to_pb(event)
            finally:
                self.uploads.release(upload.size)
        except Exception as error:
            await abort(context, error)

    async def AppendMedia(self, request_iterator, context):
        try:
            call, upload = await self._upload(request_iterator)
            spec = upload.spec
            if spec.session_id and spec.session_id != call.session_id:
                raise InvalidInput("the spec names another session than the call", field="spec.session_id")
            request = AppendRequest(
                tenant=call.tenant,
                session_id=call.session_id,
                media_kind=upload.kind,
                payload=upload.payload,
                sampling=convert.sampling_from_pb(spec.sampling),
                image_fps=spec.image_fps if upload.kind == MediaKind.IMAGES else 0.0,
                upload_s=upload.seconds,
                idempotency_key=spec.idempotency_key,
            )
            try:
                async for event in self.engine.append(request, control_for(context)):
                    yield convert.event_to_pb(event)
            finally:
                self.uploads.release(upload.size)
        except Exception as error:
            await abort(context, error)

    async def Ask(self, request: wpb.WorkerAskRequest, context):
        logcontext.bind(request.context.request_id, request.context.session_id)
        try:
            events = self.engine.ask(
                request.context.tenant,
                request.context.session_id,
                request.request.question,
                convert.generation_from_pb(request.request.generation),
                control_for(context),
                request.request.idempotency_key,
            )
            async for event in events:
                yield convert.event_to_pb(event)
        except Exception as error:
            await abort(context, error)

    async def GetSession(self, request: wpb.WorkerSessionRequest, context):
        logcontext.bind(request.context.request_id, request.context.session_id)
        try:
            self._ready()
            snapshot = await self.engine.get_session(request.context.tenant, request.context.session_id)
            return convert.session_to_pb(snapshot)
        except Exception as error:
            await abort(context, error)

    async def DeleteSession(self, request: wpb.WorkerSessionRequest, context):
        logcontext.bind(request.context.request_id, request.context.session_id)
        try:
            self._ready()
            await self.engine.delete_session(request.context.tenant, request.context.session_id)
            return pb.DeleteSessionResponse()
        except Exception as error:
            await abort(context, error)

    async def Describe(self, request, context):
        try:
            self._ready()
            return describe(self.engine, self.version)
        except Exception as error:
            await abort(context, error)

    def _ready(self) -> None:
        if not self.engine.ready:
            raise NotReady("the worker is still loading its model", retry_after_s=5.0)


def describe(engine: Engine, version: str) -> wpb.WorkerDescription:
    import torch
    import transformers

    return wpb.WorkerDescription(
        models=[convert.model_to_pb(m) for m in engine.describe_models()],
        methods=[convert.method_to_pb(m) for m in engine.describe_methods()],
        reductions=[convert.method_to_pb(m) for m in engine.describe_reductions()],
        info=pb.ServerInfo(
            version=version,
            api_version="v1",
            limits=convert.limits_to_pb(engine.limits()),
            default_model=engine.default_model,
            session_store="redis" if engine.settings.redis_url else "memory",
            runtime_versions={
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "grpcio": grpc.__version__,
            },
            workers=1,
        ),
    )
