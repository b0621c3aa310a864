"""Synthetic media for tests: small videos (PyAV), encoded images and corrupt variants.

Every frame ``i`` encodes its own index so that a test can tell which source frames were sampled,
even after lossy compression and downscaling:

- the top quarter of the frame is a gray band of level ``_level(i % 16)``,
- the second quarter a gray band of level ``_level(i // 16 % 16)``,
- the bottom half is dark with a coloured square that moves right as ``i`` grows.

``read_frame_index`` inverts this (tolerant to about ±7 gray levels of codec noise).
"""

from __future__ import annotations

import io
import os
import random
from fractions import Fraction

import av
import numpy as np
from PIL import Image

#: Gray levels are spaced 16 apart, so codec noise up to ±7 still decodes to the right digit.
_STEP = 16


def _level(digit: int) -> int:
    """Gray level for a base-16 digit, in the middle of its 16-wide bucket."""
    return digit * _STEP + _STEP // 2


def draw_frame(index: int, size: tuple[int, int] = (128, 96), frames: int = 48) -> np.ndarray:
    """Frame ``index`` of a ``frames``-long synthetic clip; returns (H, W, 3) uint8 RGB.

    ``size`` is (width, height). Indices up to 255 are distinguishable.
    """
    width, height = size
    img = np.zeros((height, width, 3), dtype=np.uint8)
    q = height // 4
    img[:q] = _level(index % 16)
    img[q : 2 * q] = _level(index // 16 % 16)
    img[2 * q :] = (20, 20, 60)
    side = max(2, height // 4)
    x = round((width - side) * index / max(1, frames - 1))
    y = 2 * q + (height - 2 * q - side) // 2
    img[y : y + side, x : x + side] = (230, 40 + (index * 37) % 180, 40)
    return img


def read_frame_index(frame: np.ndarray) -> int:
    """Recover the index drawn by ``draw_frame`` from a (H, W, 3) frame, possibly lossy or rescaled."""
    height, width = frame.shape[:2]
    q = height / 4

    def digit(top: float) -> int:
        # Read the centre of the band, away from edges where chroma subsampling / scaling bleeds.
        rows = slice(int(top + q * 0.3), max(int(top + q * 0.3) + 1, int(top + q * 0.7)))
        cols = slice(width // 4, max(width // 4 + 1, 3 * width // 4))
        level = float(frame[rows, cols].astype(np.float64).mean())
        return int(np.clip(level // _STEP, 0, 15))

    return digit(0) + 16 * digit(q)


def make_video(
    path_or_none: str | os.PathLike[str] | None = None,
    frames: int = 48,
    size: tuple[int, int] = (128, 96),
    fps: int = 24,
    codec: str = "libx264",
    container: str = "mp4",
) -> bytes:
    """Encode ``frames`` frames of ``draw_frame`` at ``size`` = (width, height) and ``fps``.

    Returns the file bytes; also writes them to ``path_or_none`` when given.
    """
    buf = io.BytesIO()
    with av.open(buf, "w", format=_container_format(container)) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = _codec_options(codec)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(draw_frame(i, size, frames), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = buf.getvalue()
    if path_or_none is not None:
        with open(path_or_none, "wb") as f:
            f.write(data)
    return data


def _container_format(container: str) -> str:
    return {"mkv": "matroska"}.get(container, container)


def _codec_options(codec: str) -> dict[str, str]:
    """Fast, high-quality settings so that tests stay quick and frame content survives encoding."""
    if codec in ("libx264", "libx265"):
        return {"preset": "ultrafast", "crf": "12"}
    if codec.startswith("libvpx"):
        return {"deadline": "realtime", "cpu-used": "8", "crf": "10"}
    return {}


def make_images(n: int, size: tuple[int, int] = (128, 96), fmt: str = "PNG") -> list[bytes]:
    """``n`` encoded images, image ``i`` drawn like video frame ``i`` (``size`` = (width, height))."""
    images = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(draw_frame(i, size, n)).save(buf, format=fmt)
        images.append(buf.getvalue())
    return images


def corrupt_variants(video_bytes: bytes, seed: int = 0) -> dict[str, bytes]:
    """Inputs that no decoder should accept, derived from a valid file (deterministic per ``seed``)."""
    rng = random.Random(seed)
    return {
        "empty": b"",
        "truncated": video_bytes[: int(len(video_bytes) * 0.4)],
        "random": rng.randbytes(len(video_bytes)),
        "text": b"hello, this is not a video\n" * 100,
    }


if __name__ == "__main__":  # `python -m tests.media demo.mp4`: a 4 s, 320x240 demo clip
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "demo.mp4"
    make_video(target, frames=96, size=(320, 240), fps=24)
    print(f"wrote {target}")
