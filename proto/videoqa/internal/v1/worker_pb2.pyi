from videoqa.v1 import videoqa_pb2 as _videoqa_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallContext(_message.Message):
    __slots__ = ("tenant", "session_id", "request_id")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    session_id: str
    request_id: str
    def __init__(self, tenant: _Optional[str] = ..., session_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class WorkerCreateSessionRequest(_message.Message):
    __slots__ = ("context", "request")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    context: CallContext
    request: _videoqa_pb2.CreateSessionRequest
    def __init__(self, context: _Optional[_Union[CallContext, _Mapping]] = ..., request: _Optional[_Union[_videoqa_pb2.CreateSessionRequest, _Mapping]] = ...) -> None: ...

class WorkerAppendRequest(_message.Message):
    __slots__ = ("context", "request")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    context: CallContext
    request: _videoqa_pb2.AppendMediaRequest
    def __init__(self, context: _Optional[_Union[CallContext, _Mapping]] = ..., request: _Optional[_Union[_videoqa_pb2.AppendMediaRequest, _Mapping]] = ...) -> None: ...

class WorkerAskRequest(_message.Message):
    __slots__ = ("context", "request")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    context: CallContext
    request: _videoqa_pb2.AskRequest
    def __init__(self, context: _Optional[_Union[CallContext, _Mapping]] = ..., request: _Optional[_Union[_videoqa_pb2.AskRequest, _Mapping]] = ...) -> None: ...

class WorkerSessionRequest(_message.Message):
    __slots__ = ("context",)
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    context: CallContext
    def __init__(self, context: _Optional[_Union[CallContext, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerDescription(_message.Message):
    __slots__ = ("models", "methods", "info", "reductions")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    REDUCTIONS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_videoqa_pb2.ModelInfo]
    methods: _containers.RepeatedCompositeFieldContainer[_videoqa_pb2.MethodInfo]
    info: _videoqa_pb2.ServerInfo
    reductions: _containers.RepeatedCompositeFieldContainer[_videoqa_pb2.MethodInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[_videoqa_pb2.ModelInfo, _Mapping]]] = ..., methods: _Optional[_Iterable[_Union[_videoqa_pb2.MethodInfo, _Mapping]]] = ..., info: _Optional[_Union[_videoqa_pb2.ServerInfo, _Mapping]] = ..., reductions: _Optional[_Iterable[_Union[_videoqa_pb2.MethodInfo, _Mapping]]] = ...) -> None: ...
