"""Upload assembly: ordering rules, size caps, and the shared budget of buffered bytes."""

from __future__ import annotations

import asyncio

import pytest

from tests.service.helpers import spec, upload
from videoqa.service.upload import UploadBudget, read_upload, upload_messages
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.worker.errors import InvalidInput, LimitExceeded
from videoqa.worker.types import MediaKind


async def _stream(messages):
    for message in messages:
        yield message


def read(messages, **kw):
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("max_images", 8)
    return asyncio.run(read_upload(_stream(messages), **kw))


def test_video_and_images_reassemble_and_restream():
    video = bytes(range(256)) * 100
    got = read(list(upload(spec(), video=video, chunk=999)))
    assert got.kind == MediaKind.VIDEO and got.payload == video and got.size == len(video)
    images = [b"a" * 700, b"b" * 10, b"c" * 1500]
    got = read(list(upload(spec(), images=images, chunk=300)))
    assert got.kind == MediaKind.IMAGES and got.payload == images
    again = read(list(upload_messages(got, chunk=64)))
    assert again.payload == images and again.spec.media_kind == pb.MEDIA_KIND_IMAGES


def test_ordering_rules():
    with pytest.raises(InvalidInput):
        read([pb.CreateSessionRequest(video_chunk=b"x")])
    with pytest.raises(InvalidInput):
        read([pb.CreateSessionRequest(spec=spec()), pb.CreateSessionRequest(spec=spec())])
    with pytest.raises(InvalidInput):  # mixed media
        read([*upload(spec(), video=b"v"), pb.CreateSessionRequest(image=pb.ImagePart(index=0, data=b"i"))])
    with pytest.raises(InvalidInput):  # image index skips one
        read([pb.CreateSessionRequest(spec=spec()), pb.CreateSessionRequest(image=pb.ImagePart(index=1, data=b"i"))])
    with pytest.raises(LimitExceeded):
        read(list(upload(spec(), images=[b"i"] * 9)))


def test_budget_is_shared_and_released_on_failure():
    budget = UploadBudget(limit=1000)
    first = read(list(upload(spec(), video=b"x" * 600)), budget=budget)
    assert budget.used == 600  # held until the caller releases it
    with pytest.raises(LimitExceeded) as err:
        read(list(upload(spec(), video=b"y" * 600)), budget=budget)
    assert err.value.retry_after_s is not None
    assert budget.used == 600, "a refused upload must give back what it took"
    budget.release(first.size)
    assert read(list(upload(spec(), video=b"y" * 600)), budget=budget).size == 600


def test_server_releases_the_budget_after_each_upload(server, stub):
    """Over gRPC: after uploads that succeed and uploads that fail, nothing stays taken."""
    import grpc

    from tests.media import make_video
    from tests.service.helpers import events

    video = make_video(None, frames=12, size=(64, 64), fps=6)
    events(stub.CreateSession(upload(spec(frames=4), video=video), timeout=60))
    with pytest.raises(grpc.RpcError):
        list(stub.CreateSession(upload(spec(frames=4), video=b"not a video" * 10), timeout=60))
    assert server.budgets() == (0, 0)
