"""Fuzzed uploads through the real service over gRPC: the decoder boundary holds.

About 300 inputs, derived deterministically (seeded) from the suite's synthetic videos and images
and from the frame widths decord lays out wrongly: random byte flips, truncations, inserted and
deleted junk, mp4 boxes with corrupt sizes, claims of huge or zero frame sizes in the mp4 headers,
empty and tiny files, and image sequences with corrupt or huge-claiming PNG/JPEG images. Each
``CreateSession`` (4 frames, no question) must end OK or with a client-error status (never
INTERNAL, UNKNOWN or a deadline: no hang), and the server must be SERVING afterwards.
"""

from __future__ import annotations

import collections
import random
import struct
import time
import zlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.media import make_images, make_video
from tests.service.helpers import spec, upload
from videoqa.v1 import videoqa_pb2 as pb

SEED = 16
#: Each call's deadline: far above a 4-frame session on the tiny model, far below the decoder's timeout.
CALL_TIMEOUT_S = 30.0
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
#: mp4 boxes whose sizes and contents the box-level mutations corrupt.
BOXES = [b"ftyp", b"moov", b"mvhd", b"trak", b"tkhd", b"mdia", b"stbl", b"stsd", b"avc1", b"avcC", b"stts"]
BOXES += [b"stsz", b"stco", b"stsc", b"stss", b"mdat"]


def _videos() -> dict[str, bytes]:
    """The seeds: small clips of each container the suite uses, and widths decord lays out wrongly."""
    return {
        "mp4": make_video(None, frames=12, size=(128, 96), fps=12),
        "mp4-w48": make_video(None, frames=8, size=(48, 64), fps=8),
        "mp4-w72": make_video(None, frames=8, size=(72, 40), fps=8),
        "mp4-w24": make_video(None, frames=6, size=(24, 16), fps=6),
        "mkv": make_video(None, frames=8, size=(96, 64), fps=8, container="mkv"),
        "webm": make_video(None, frames=8, size=(64, 48), fps=8, codec="libvpx-vp9", container="webm"),
        "avi": make_video(None, frames=8, size=(64, 48), fps=8, codec="mpeg4", container="avi"),
    }


def _flip(rng: random.Random, data: bytes, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 512)) + data[at:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 2048) :]


def _box_offsets(data: bytes, box: bytes) -> list[int]:
    """Offsets of the type field of every ``box`` in ``data`` (a naive scan; good enough to corrupt)."""
    offsets, at = [], data.find(box)
    while at >= 4:
        offsets.append(at)
        at = data.find(box, at + 1)
    return offsets


def _corrupt_box(rng: random.Random, data: bytes) -> bytes:
    found = [(box, at) for box in BOXES for at in _box_offsets(data, box)]
    if not found:
        return _flip(rng, data, 8)
    _, at = rng.choice(found)
    out = bytearray(data)
    how = rng.randrange(4)
    if how == 0:  # the box's size field
        out[at - 4 : at] = struct.pack(">I", rng.choice([0, 1, 7, 0xFFFFFFFF, rng.randrange(1 << 32)]))
    elif how == 1:  # its first bytes
        for i in range(at + 4, min(len(out), at + 4 + 16)):
            if rng.random() < 0.5:
                out[i] = rng.randrange(256)
    elif how == 2:  # the box's type
        out[at : at + 4] = rng.randbytes(4)
    else:  # everything from the box on
        del out[at + rng.randint(4, 64) :]
    return bytes(out)


def _dimension_claims(mp4: bytes) -> list[bytes]:
    """The mp4 claiming huge, zero or odd frame sizes in its sample entry and track header."""
    claims = []
    for width, height in [(65535, 65535), (0, 0), (1, 65535), (65535, 1), (16384, 16384), (3, 3)]:
        out = bytearray(mp4)
        for at in _box_offsets(mp4, b"avc1"):  # visual sample entry: width, height 24 bytes after the type
            out[at + 28 : at + 32] = struct.pack(">HH", width, height)
        for at in _box_offsets(mp4, b"tkhd"):  # track header: width, height (16.16) are its last 8 bytes
            size = struct.unpack(">I", mp4[at - 4 : at])[0]
            end = at - 4 + size
            out[end - 8 : end] = struct.pack(">II", width << 16, height << 16)
        claims.append(bytes(out))
    # Corrupt the SPS (frame size, profile) inside avcC.
    rng = random.Random(SEED + 1)
    for at in _box_offsets(mp4, b"avcC")[:1]:
        for _ in range(6):
            out = bytearray(mp4)
            for i in range(at + 12, at + 24):
                if rng.random() < 0.3:
                    out[i] = rng.randrange(256)
            claims.append(bytes(out))
    return claims


def _png_with_size(png: bytes, width: int, height: int, fix_crc: bool = True) -> bytes:
    """``png`` with its IHDR claiming ``width`` x ``height`` (CRC recomputed unless ``fix_crc`` is false)."""
    out = bytearray(png)
    out[16:24] = struct.pack(">II", width, height)
    if fix_crc:
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def _jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    out = bytearray(jpeg)
    at = jpeg.find(b"\xff\xc0")
    if at >= 0:
        out[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def _image_sets(rng: random.Random) -> list[list[bytes]]:
    pngs, jpegs = make_images(4, size=(64, 48)), make_images(4, size=(64, 48), fmt="JPEG")
    sets = []
    for images in (pngs, jpegs):
        for _ in range(6):
            bad = list(images)
            i = rng.randrange(len(bad))
            bad[i] = rng.choice([_flip(rng, bad[i], rng.randint(1, 16)), bad[i][: rng.randrange(len(bad[i]))]])
            sets.append(bad)
    for width, height in [(1 << 30, 1 << 30), (100000, 100000), (0, 0), (1, 1 << 20)]:
        sets.append([_png_with_size(pngs[0], width, height), *pngs[1:]])
        sets.append([_jpeg_with_size(jpegs[0], min(width, 65535), min(height, 65535)), *jpegs[1:]])
    sets.append([_png_with_size(pngs[0], 1 << 20, 1 << 20, fix_crc=False), *pngs[1:]])
    sets.append([b"", *pngs[1:]])
    sets.append([rng.randbytes(300) for _ in range(4)])
    sets.append([pngs[0][:8] + jpegs[0][2:]])  # a PNG signature on a JPEG body
    return sets


def fuzz_inputs() -> list[tuple[str, str, bytes | list[bytes]]]:
    """(name, kind, payload) for every input, the same on every run."""
    rng = random.Random(SEED)
    inputs: list[tuple[str, str, bytes | list[bytes]]] = []
    for name, video in _videos().items():
        for i in range(18):
            inputs.append((f"{name}-flip{i}", "video", _flip(rng, video, rng.choice([1, 2, 4, 8, 32]))))
        for i in range(5):
            inputs.append((f"{name}-cut{i}", "video", video[: rng.randrange(len(video))]))
        for i in range(5):
            inputs.append((f"{name}-insert{i}", "video", _insert(rng, video)))
        for i in range(4):
            inputs.append((f"{name}-delete{i}", "video", _delete(rng, video)))
        for i in range(6 if name.startswith("mp4") else 2):
            inputs.append((f"{name}-box{i}", "video", _corrupt_box(rng, video)))
    mp4 = _videos()["mp4"]
    for i, claim in enumerate(_dimension_claims(mp4)):
        inputs.append((f"mp4-dims{i}", "video", claim))
    for name, data in [("empty", b""), ("one-byte", b"\x00"), ("ftyp-only", mp4[:32]), ("junk", rng.randbytes(4096))]:
        inputs.append((name, "video", data))
    for i, images in enumerate(_image_sets(rng)):
        inputs.append((f"images{i}", "images", images))
    return inputs


def _create(stub, kind: str, payload: bytes | list[bytes]) -> tuple[grpc.StatusCode, str]:
    """(status, session id or error details) of one ``CreateSession`` of ``payload``, 4 frames, no question."""
    if kind == "video":
        requests = upload(spec(frames=4), video=payload)
    else:
        requests = upload(spec(frames=4, media_kind=pb.MEDIA_KIND_IMAGES), images=payload)
    try:
        for response in stub.CreateSession(requests, timeout=CALL_TIMEOUT_S):
            if response.WhichOneof("event") == "session":
                return grpc.StatusCode.OK, response.session.session.session_id
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.UNKNOWN, "the stream ended without a session"


def test_fuzzed_uploads_never_break_the_server(server, stub) -> None:
    inputs = fuzz_inputs()
    assert len(inputs) >= 280
    start = time.monotonic()
    outcomes: collections.Counter[str] = collections.Counter()
    failures = []
    for name, kind, payload in inputs:
        code, detail = _create(stub, kind, payload)
        outcomes[code.name] += 1
        if code not in ALLOWED:
            failures.append(f"{name}: {code.name} {detail}")
        elif code is grpc.StatusCode.OK:
            stub.DeleteSession(pb.DeleteSessionRequest(session_id=detail), timeout=10)
        elif "invalid result" in detail:
            failures.append(f"{name}: the real decoder broke the protocol: {detail}")
        elif "crashed" in detail or "longer than" in detail:
            outcomes["decoder crashed or timed out"] += 1
    elapsed = time.monotonic() - start
    print(f"\n{len(inputs)} fuzzed uploads in {elapsed:.1f} s: {dict(outcomes)}")
    assert not failures, failures
    assert outcomes["OK"] and outcomes["INVALID_ARGUMENT"]  # the mutations reach both sides

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    code, session_id = _create(stub, "video", make_video(None, frames=8, size=(64, 48), fps=8))
    assert code is grpc.StatusCode.OK, session_id
    stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id), timeout=10)


def test_the_inputs_are_deterministic() -> None:
    # Same mutations every run; only the Matroska muxer's random UIDs and date differ between runs.
    first, second = fuzz_inputs(), fuzz_inputs()
    assert [(n, k, _size(p)) for n, k, p in first] == [(n, k, _size(p)) for n, k, p in second]
    assert [x for x in first if not x[0].startswith(("mkv", "webm"))] == [
        x for x in second if not x[0].startswith(("mkv", "webm"))
    ]


def _size(payload: bytes | list[bytes]) -> int | list[int]:
    return len(payload) if isinstance(payload, bytes) else [len(p) for p in payload]
