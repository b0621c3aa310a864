"""Media sources of an upload (a video file or an image sequence) and the upload's messages.

Media are kept as paths or bytes, never as open streams, so that an upload can be re-sent from
the start when a retry needs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from videoqa.v1 import videoqa_pb2 as pb

#: A path, the bytes of a video, or a list of image paths or bytes (a list means images).
ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview
MediaSource = str | os.PathLike[str] | bytes | bytearray | memoryview | Sequence[ImageSource]

#: Called during an upload with (bytes handed to gRPC so far, total bytes).
UploadCallback = Callable[[int, int], None]

#: File suffixes taken from a directory of images.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

VIDEO = "video"
IMAGES = "images"


def natural_key(path: Path) -> list[object]:
    """Sort key that puts ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def image_files(directory: Path) -> list[Path]:
    """The image files of ``directory`` in natural name order (hidden files skipped)."""
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    return sorted(files, key=natural_key)


@dataclass(frozen=True)
class Media:
    """What an upload sends: one video, or an ordered sequence of images."""

    kind: str
    items: tuple[bytes | Path, ...]
    sizes: tuple[int, ...]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def media_kind(self) -> int:
        return pb.MEDIA_KIND_IMAGES if self.kind == IMAGES else pb.MEDIA_KIND_VIDEO

    @classmethod
    def load(cls, source: MediaSource, *, images: bool = False) -> Media:
        """Resolves ``source`` (checking that files exist) without reading it.

        A list, a directory or ``images=True`` means an image sequence; a single path or bytes
        otherwise means a video.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            return cls._of(IMAGES if images else VIDEO, [bytes(source)])
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir():
                return cls._of(IMAGES, list(image_files(path)))
            return cls._of(IMAGES if images else VIDEO, [_existing_file(path)])
        if isinstance(source, Sequence):
            items: list[bytes | Path] = []
            for item in source:
                if isinstance(item, (bytes, bytearray, memoryview)):
                    items.append(bytes(item))
                elif isinstance(item, (str, os.PathLike)):
                    path = Path(item)
                    items.extend(image_files(path) if path.is_dir() else [_existing_file(path)])
                else:
                    raise TypeError(f"an image must be a path or bytes, not {type(item).__name__}")
            if not items:
                raise ValueError("no images given")
            return cls._of(IMAGES, items)
        raise TypeError(f"media must be a path, bytes or a list of images, not {type(source).__name__}")

    @classmethod
    def _of(cls, kind: str, items: list[bytes | Path]) -> Media:
        sizes = tuple(len(i) if isinstance(i, bytes) else i.stat().st_size for i in items)
        return cls(kind=kind, items=tuple(items), sizes=sizes)

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, bytes]]:
        """Yields ``(item index, piece)``; an empty item still yields one empty piece."""
        for index, item in enumerate(self.items):
            if isinstance(item, bytes):
                view = memoryview(item)
                if not item:
                    yield index, b""
                for start in range(0, len(item), chunk_size):
                    yield index, bytes(view[start : start + chunk_size])
                continue
            with item.open("rb") as f:
                piece = f.read(chunk_size)
                yield index, piece
                while piece:
                    piece = f.read(chunk_size)
                    if piece:
                        yield index, piece

    def requests(
        self, spec: pb.SessionSpec | pb.AppendSpec, chunk_size: int, on_upload: UploadCallback | None = None
    ) -> Iterator[pb.CreateSessionRequest | pb.AppendMediaRequest]:
        """The messages of one upload: the spec, then the media in ``chunk_size`` pieces.

        A :class:`SessionSpec` makes ``CreateSession`` messages, an :class:`AppendSpec`
        ``AppendMedia`` messages (both carry the media the same way).
        """
        message = pb.AppendMediaRequest if isinstance(spec, pb.AppendSpec) else pb.CreateSessionRequest
        total = self.total_bytes
        yield message(spec=spec)
        sent = 0
        if on_upload is not None:
            on_upload(0, total)
        for index, piece in self.chunks(chunk_size):
            if self.kind == IMAGES:
                yield message(image=pb.ImagePart(index=index, data=piece))
            else:
                if not piece:
                    continue
                yield message(video_chunk=piece)
            sent += len(piece)
            if on_upload is not None:
                on_upload(sent, total)


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path
