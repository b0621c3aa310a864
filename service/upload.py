"""Reading a client-streamed upload into memory under a size cap, and re-streaming it.

Both uploads that carry media (``CreateSession`` and ``AppendMedia``) stream the same message
shape: a first message with a ``spec`` (``SessionSpec`` or ``AppendSpec``, both with a media kind
and an optional total size), then ``video_chunk`` or ``image`` parts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from videoqa.service.convert import media_kind_from_pb
from videoqa.v1 import videoqa_pb2 as pb
from videoqa.worker.errors import InvalidInput, LimitExceeded
from videoqa.worker.types import MediaKind

CHUNK = 1 << 20


class UploadBudget:
    """Bytes of uploads buffered in memory at once, across all calls of one server.

    Every upload is held in memory until it is decoded; without a shared bound, many concurrent
    large uploads could exhaust memory. Beyond the budget a new upload is RESOURCE_EXHAUSTED with
    a retry hint. Used from one event loop, so no lock is needed.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        if self.used + size > self.limit:
            raise LimitExceeded("the server is receiving too many uploads at once; retry shortly", retry_after_s=5.0)
        self.used += size

    def release(self, size: int) -> None:
        self.used = max(0, self.used - size)


@dataclass
class Upload:
    spec: pb.SessionSpec | pb.AppendSpec
    kind: MediaKind
    #: The video's bytes, or one encoded image per item.
    payload: bytes | list[bytes]
    size: int
    seconds: float


async def read_upload(
    requests: AsyncIterator[pb.CreateSessionRequest | pb.AppendMediaRequest],
    *,
    max_bytes: int,
    max_images: int,
    budget: UploadBudget | None = None,
) -> Upload:
    """Assemble an upload; refuses oversize uploads as soon as the cap is crossed.

    With a ``budget``, the upload's bytes are taken from it as they arrive; the caller releases
    ``Upload.size`` when done with the upload (if reading fails, they are released here).
    """
    budget = budget or UploadBudget(max_bytes)
    taken = [0]
    try:
        return await _read(requests, max_bytes, max_images, budget, taken)
    except BaseException:
        budget.release(taken[0])
        raise


async def _read(
    requests: AsyncIterator[pb.CreateSessionRequest | pb.AppendMediaRequest],
    max_bytes: int,
    max_images: int,
    budget: UploadBudget,
    taken: list[int],
) -> Upload:
    started = time.perf_counter()
    spec: pb.SessionSpec | pb.AppendSpec | None = None
    kind: MediaKind | None = None
    video: list[bytes] = []
    images: list[list[bytes]] = []
    size = 0
    async for message in requests:
        field = message.WhichOneof("payload")
        if spec is None:
            if field != "spec":
                raise InvalidInput("the first message of an upload must carry `spec`", field="spec")
            spec = message.spec
            kind = media_kind_from_pb(spec.media_kind)
            if spec.total_bytes > max_bytes:
                raise LimitExceeded(f"the upload has {spec.total_bytes} bytes; the limit is {max_bytes}")
            continue
        if field == "spec":
            raise InvalidInput("`spec` may only be sent once, first", field="spec")
        if field is None:
            continue
        this_kind = MediaKind.VIDEO if field == "video_chunk" else MediaKind.IMAGES
        if kind is None:
            kind = this_kind
        elif kind != this_kind:
            raise InvalidInput(f"a {kind.value} upload cannot contain {field} messages", field=field)
        data = message.video_chunk if field == "video_chunk" else message.image.data
        size += len(data)
        if size > max_bytes:
            raise LimitExceeded(f"the upload exceeds the limit of {max_bytes} bytes")
        budget.take(len(data))
        taken[0] += len(data)
        if field == "video_chunk":
            video.append(data)
            continue
        index = message.image.index
        if index == len(images):
            if len(images) >= max_images:
                raise LimitExceeded(f"the upload has more than {max_images} images", field="image")
            images.append([data])
        elif images and index == len(images) - 1:
            images[-1].append(data)
        else:
            raise InvalidInput(f"image index {index} out of order (expected {len(images)})", field="image.index")
    if spec is None:
        raise InvalidInput("the upload is empty: no `spec` message", field="spec")
    kind = kind or MediaKind.VIDEO
    payload: bytes | list[bytes] = b"".join(video) if kind == MediaKind.VIDEO else [b"".join(p) for p in images]
    return Upload(spec, kind, payload, size, time.perf_counter() - started)


def upload_messages(upload: Upload, chunk: int = CHUNK) -> Iterator[pb.CreateSessionRequest | pb.AppendMediaRequest]:
    """The upload as a stream again, in the message type it came in: its spec (with the resolved
    media kind), then the media."""
    message = pb.AppendMediaRequest if isinstance(upload.spec, pb.AppendSpec) else pb.CreateSessionRequest
    spec = type(upload.spec)()
    spec.CopyFrom(upload.spec)
    spec.media_kind = pb.MEDIA_KIND_IMAGES if upload.kind == MediaKind.IMAGES else pb.MEDIA_KIND_VIDEO
    yield message(spec=spec)
    if isinstance(upload.payload, bytes):
        for start in range(0, len(upload.payload), chunk):
            yield message(video_chunk=upload.payload[start : start + chunk])
        return
    for index, image in enumerate(upload.payload):
        for start in range(0, max(len(image), 1), chunk):
            yield message(image=pb.ImagePart(index=index, data=image[start : start + chunk]))
