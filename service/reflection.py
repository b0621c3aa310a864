"""gRPC server reflection under both of its service names, ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only ``grpc.reflection.v1alpha``; current clients (grpcurl, grpcui,
Postman) ask ``grpc.reflection.v1`` first. The two protocols are wire-identical (same messages,
same field numbers, only the package differs), so the library's own servicer answers both: its
handler is registered a second time under the v1 service name.

The list of services names ``v1alpha`` only: the v1 proto's descriptor is not in the process's
descriptor pool, and a listed service that cannot be described breaks ``grpcurl describe``.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = reflection.SERVICE_NAME


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection of ``service_names`` (plus the reflection service) on ``server``, v1 and v1alpha."""
    servicer = reflection.aio.ReflectionServicer(dict.fromkeys((*service_names, V1ALPHA)))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1, handlers),))
    server.add_registered_method_handlers(V1, handlers)


__all__ = ["V1", "V1ALPHA", "enable_server_reflection"]
