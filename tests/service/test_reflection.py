"""Server reflection v1 (what grpcurl asks first) and v1alpha, on the frontend and on the worker.

The client here speaks only ``grpc.reflection.v1``: it calls the v1 method path directly; the
messages are wire-identical to v1alpha's, whose generated classes (de)serialize them."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def v1_reflect(address: str, requests: list[reflection_pb2.ServerReflectionRequest]):
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(
            V1_METHOD,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        return list(call(iter(requests), timeout=10))


def discover(address: str) -> tuple[set[str], descriptor_pool.DescriptorPool]:
    """grpcurl-style: list the services, then fetch the file of each (with its dependencies) into a pool."""
    (listed,) = v1_reflect(address, [reflection_pb2.ServerReflectionRequest(list_services="")])
    names = {s.name for s in listed.list_services_response.service}
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    replies = v1_reflect(address, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names])
    for reply in replies:
        assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
        for raw in reply.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[proto.name] = proto
    pool = descriptor_pool.DescriptorPool()

    def add(name: str) -> None:
        proto = files.pop(name, None)
        if proto is not None:
            for dependency in proto.dependency:
                add(dependency)
            pool.Add(proto)

    while files:
        add(next(iter(files)))
    return names, pool


def test_v1_only_client_discovers_the_public_api(server):
    names, pool = discover(server.address)
    assert {"videoqa.v1.VideoQA", "grpc.health.v1.Health"} <= names
    ask = pool.FindMethodByName("videoqa.v1.VideoQA.Ask")
    assert ask.input_type.full_name == "videoqa.v1.AskRequest"
    assert ask.output_type.full_name == "videoqa.v1.AskResponse"
    assert not ask.client_streaming and ask.server_streaming
    assert "question" in ask.input_type.fields_by_name
    assert pool.FindMethodByName("videoqa.v1.VideoQA.CreateSession").client_streaming


def test_v1_on_the_worker(server):
    names, pool = discover(f"127.0.0.1:{server.worker.port}")
    assert "videoqa.internal.v1.Worker" in names
    assert pool.FindMethodByName("videoqa.internal.v1.Worker.Ask").server_streaming


def test_v1_unknown_symbol_is_an_error_response_and_v1alpha_still_answers(server):
    (reply,) = v1_reflect(server.address, [reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such")])
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="videoqa.v1.VideoQA")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    assert reply.file_descriptor_response.file_descriptor_proto
