"""Building raw protobuf requests for the service tests."""

from __future__ import annotations

from videoqa.v1 import videoqa_pb2 as pb


def upload(spec: pb.SessionSpec, video: bytes | None = None, images: list[bytes] | None = None, chunk: int = 65536):
    """An upload stream: spec first, then the media in ``chunk``-byte pieces."""
    yield pb.CreateSessionRequest(spec=spec)
    if video is not None:
        for start in range(0, len(video), chunk):
            yield pb.CreateSessionRequest(video_chunk=video[start : start + chunk])
    for index, image in enumerate(images or []):
        for start in range(0, len(image), chunk):
            yield pb.CreateSessionRequest(image=pb.ImagePart(index=index, data=image[start : start + chunk]))


def spec(model: str = "tiny-qwen2-vl", frames: int = 8, question: str = "", max_new_tokens: int = 6, **kw):
    kw.setdefault("generation", pb.GenerationParams(max_new_tokens=max_new_tokens))
    return pb.SessionSpec(model=model, sampling=pb.FrameSampling(num_frames=frames), question=question, **kw)


def events(responses) -> dict[str, list]:
    """Group a reply stream by event kind."""
    grouped: dict[str, list] = {"progress": [], "session": [], "token": [], "stats": []}
    for response in responses:
        kind = response.WhichOneof("event")
        grouped[kind].append(getattr(response, kind))
    return grouped
