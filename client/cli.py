"""The ``videoqa`` command line.

Client commands (need only the base install)::

    videoqa ask VIDEO QUESTION [options]    upload, answer one question, delete the session
    videoqa chat VIDEO [options]            upload once, then answer questions read from stdin
                                            (``/add PATH`` appends a file as a new segment)
    videoqa watch DIR|FILE... [options]     one session over files as they come: create it from
                                            the first, append each further one, answer questions
                                            read from stdin meanwhile
    videoqa info | models | methods         describe the deployment

Server commands (``serve``, ``frontend``, ``worker``, ``diagnose``) are handed, arguments untouched,
to the module named in ``SERVER_COMMANDS``; they need the ``server`` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import shlex
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, TextIO

import grpc
from tqdm import tqdm

from ._common import DEFAULT_TARGET, tls_credentials
from ._media import IMAGE_SUFFIXES, natural_key
from .errors import VideoQAError
from .sync import Session, VideoQAClient
from .types import (
    Answer,
    Event,
    FrameSampling,
    Generation,
    Progress,
    Pruning,
    Reduction,
    SessionCreated,
    SessionInfo,
    Token,
    TurnStats,
)

#: Commands that need the server extra, and the module whose ``main(argv)`` runs each.
SERVER_COMMANDS = {
    "serve": "videoqa.service.app",
    "frontend": "videoqa.service.app",
    "worker": "videoqa.service.app",
    "diagnose": "videoqa.worker.pruning.diagnose",
    "eval": "videoqa.lab.harness",
}
_SERVER_HELP = {
    "serve": "run a frontend and a worker in one process",
    "frontend": "run the public API frontend",
    "worker": "run a model worker",
    "diagnose": "plot per-frame attention (attention myopia) and kept tokens per method, locally",
    "eval": "accuracy of a model on a video-QA suite for methods x budgets x modes, locally",
}
SERVER_EXTRA_HINT = "the server needs the server extra: pip install 'videoqa[server]'"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_DELETE_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# Formatting


def human_bytes(n: float) -> str:
    """``16777216`` -> ``"16.0 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def stats_line(stats: TurnStats) -> str:
    """One-line summary of a turn: frames, visual tokens (encoded, into the language model when a
    reduction dropped some, kept in the KV), KV bytes, time to first token."""
    encoded = max(stats.visual_tokens_encoded, stats.visual_tokens_before)
    kept = stats.visual_tokens_after / encoded if encoded else 1.0
    into = f"{stats.visual_tokens_before}→" if encoded != stats.visual_tokens_before else ""
    t = stats.timings
    parts = [
        f"{stats.frames_used} frames",
        f"visual tokens {encoded}→{into}{stats.visual_tokens_after} ({kept:.0%} kept)",
        f"KV {human_bytes(stats.kv_bytes_before)}→{human_bytes(stats.kv_bytes_after)}",
        f"TTFT {t.time_to_first_token_seconds:.2f} s",
        f"{stats.generated_tokens} tokens in {t.generate_seconds:.2f} s",
    ]
    return " · ".join(parts)


def _encoded(info: SessionInfo) -> str:
    """ "N→" when a reduction let fewer than the N encoded visual tokens into the language model."""
    encoded = info.visual_tokens_encoded
    return f"{encoded}→" if encoded > info.visual_tokens_before else ""


def describe_session(info: SessionInfo) -> str:
    """A few lines describing a session, for ``/info``."""
    f = info.frames
    pruning = info.pruning.method or "default"
    budget = info.pruning.budget or 1.0
    cap = f", at most {info.pruning.max_visual_tokens} visual tokens" if info.pruning.max_visual_tokens else ""
    reduction = info.pruning.reduction
    if reduction.method and reduction.method != "none":
        cap += f"; {reduction.method} before the LLM, retention {reduction.retention or 1.0:g}"
    span = f" over {f.timestamps[0]:.1f}–{f.timestamps[-1]:.1f} s" if f.timestamps else ""
    segments = f"{info.segments} (the upload and {info.segments - 1} appended)" if info.segments > 1 else "1"
    lines = [
        f"session   {info.session_id}",
        f"model     {info.model}",
        f"media     {info.media_kind}: {f.source_frames} frames, {f.source_fps:g} fps, "
        f"{f.source_duration_seconds:.1f} s",
        f"segments  {segments}",
        f"frames    {len(f.indices)} sampled at {f.width}x{f.height}{span}",
        f"pruning   {pruning}, budget {budget:g}{cap}"
        + "".join(f", {k}={v:g}" for k, v in sorted(info.pruning.params.items())),
        f"tokens    visual {_encoded(info)}{info.visual_tokens_before}→{info.visual_tokens_after}, "
        f"context {info.context_length}, cache {info.cache_length}",
        f"kv        {human_bytes(info.kv_bytes)}",
        f"turns     {info.turns}",
    ]
    return "\n".join(lines)


def _seconds_list(timestamps: Sequence[float], most: int = 12) -> str:
    """``[0, 1, 2]`` -> ``"0.00, 1.00, 2.00 s"``; a long list shows its ends only."""
    if not timestamps:
        return "no timestamps"
    if len(timestamps) > most:
        return f"{timestamps[0]:.2f} … {timestamps[-1]:.2f} s"
    return ", ".join(f"{t:.2f}" for t in timestamps) + " s"


def segment_line(before: SessionInfo | None, after: SessionInfo, path: str) -> str:
    """What an upload or an append added: ``segment 2 (b.mp4): +4 frames at 8.00, ... s; ...``."""
    known = len(before.frames.indices) if before is not None else 0
    added = after.frames.timestamps[known:]
    total = len(after.frames.indices)
    return (
        f"segment {after.segments} ({path}): +{len(after.frames.indices) - known} frames at {_seconds_list(added)}; "
        f"session {total} frames, {after.visual_tokens_after} visual tokens kept"
    )


def segment_record(before: SessionInfo | None, after: SessionInfo, path: str) -> dict[str, Any]:
    """The JSON record of :func:`segment_line`."""
    known = len(before.frames.indices) if before is not None else 0
    return {
        "segment": after.segments,
        "path": path,
        "session_id": after.session_id,
        "frames_added": len(after.frames.indices) - known,
        "timestamps": list(after.frames.timestamps[known:]),
        "frames": len(after.frames.indices),
        "visual_tokens_after": after.visual_tokens_after,
    }


def _to_json(obj: Any) -> str:
    return json.dumps(_plain(obj), ensure_ascii=False)


def _plain(obj: Any) -> Any:
    """``obj`` with dataclasses as dicts, through lists and dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, list):
        return [_plain(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# Progress display


class ProgressDisplay:
    """tqdm bars on stderr: bytes for the upload, then one bar per server stage.

    Bars are shown only when stderr is a terminal (tqdm's ``disable=None``).
    """

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file
        self._upload: tqdm | None = None
        self._stage: tqdm | None = None
        self._stage_name = ""

    def _bar(self, **kwargs: Any) -> tqdm:
        return tqdm(file=self._file or sys.stderr, disable=None, dynamic_ncols=True, **kwargs)

    def upload(self, sent: int, total: int) -> None:
        """``on_upload`` callback: bytes handed to gRPC so far."""
        if self._upload is None:
            self._upload = self._bar(total=total, desc="upload", unit="B", unit_scale=True, unit_divisor=1024)
        self._upload.update(sent - self._upload.n)

    def progress(self, event: Progress) -> None:
        """``on_progress`` callback: a server stage's progress."""
        if event.stage == "upload":
            if event.done:
                self._close_upload()
            return
        self._close_upload()
        if event.stage != self._stage_name or self._stage is None:
            self._close_stage()
            self._stage_name = event.stage
            self._stage = self._bar(
                total=100,
                desc=f"{event.stage:>7}",
                bar_format="{desc}: {percentage:3.0f}%|{bar:40}| {elapsed}{postfix}",
            )
        self._stage.update(round(event.fraction * 100) - self._stage.n)
        note = f"took {event.seconds:.2f} s" if event.done and event.seconds else ""
        self._stage.set_postfix_str(" ".join(x for x in (note, event.detail) if x), refresh=False)
        if event.done:
            self._close_stage()

    def _close_upload(self) -> None:
        if self._upload is not None:
            self._upload.close()
            self._upload = None

    def _close_stage(self) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None
            self._stage_name = ""

    def close(self) -> None:
        self._close_upload()
        self._close_stage()


# --------------------------------------------------------------------------------------------
# Arguments


def _param(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _connection_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--server",
        default=os.environ.get("VIDEOQA_SERVER", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help="server address (default: $VIDEOQA_SERVER or %(default)s)",
    )
    g.add_argument("--timeout", type=float, metavar="S", help="deadline of each call in seconds")
    g.add_argument("--tls", action="store_true", help="connect with TLS")
    g.add_argument("--ca-cert", metavar="PEM", help="CA certificate for TLS (implies --tls)")
    g.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS (implies --tls)")
    g.add_argument("--client-key", metavar="PEM", help="private key of --client-cert")
    g.add_argument(
        "--token",
        default=os.environ.get("VIDEOQA_TOKEN"),
        help="bearer token sent as authorization metadata (default: $VIDEOQA_TOKEN)",
    )
    g.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def _session_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    s = p.add_argument_group("sampling")
    rate = s.add_mutually_exclusive_group()
    rate.add_argument("--frames", type=_positive_int, metavar="N", help="sample exactly N frames")
    rate.add_argument("--fps", type=float, metavar="F", help="sample F frames per second")
    s.add_argument("--max-frames", type=int, default=0, metavar="N", help="upper bound on frames")
    s.add_argument("--max-resolution", type=int, default=0, metavar="PX", help="longest side of a frame")
    s.add_argument("--images", action="store_true", help="the media are images, one frame each")
    s.add_argument("--image-fps", type=float, default=0.0, metavar="F", help="time base of an image sequence")
    s.add_argument("--model", default="", metavar="ID", help="model id (see `videoqa models`)")
    pr = p.add_argument_group("pruning")
    pr.add_argument("--method", default="", metavar="NAME", help="pruning method (see `videoqa methods`)")
    pr.add_argument("--budget", type=float, default=0.0, metavar="F", help="fraction of visual tokens kept")
    pr.add_argument(
        "--max-visual-tokens",
        type=_non_negative_int,
        default=0,
        metavar="K",
        help="most visual tokens each layer keeps however long the media (0: no cap; progressive methods only)",
    )
    pr.add_argument(
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="method parameter (repeatable)",
    )
    pr.add_argument(
        "--reduction",
        default="",
        metavar="NAME",
        help="drop visual tokens before the language model (see `videoqa methods`); --budget then applies to the rest",
    )
    pr.add_argument(
        "--retention",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of visual tokens the reduction lets into the language model",
    )
    pr.add_argument(
        "--reduction-param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="reduction parameter (repeatable)",
    )
    gen = p.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=0, metavar="N")
    gen.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 means greedy")
    gen.add_argument("--top-p", type=float, default=0.0, metavar="P")
    gen.add_argument("--seed", type=int, default=None, metavar="S")
    p.add_argument("--keep", action="store_true", help="keep the session on the server and print its id")
    return p


#: Client commands: help line, and whether they take the session options.
_CLIENT_COMMANDS: dict[str, tuple[str, bool]] = {
    "ask": ("answer one question about a video", True),
    "chat": ("ask questions read from stdin about one upload", True),
    "watch": ("follow files as they come (a directory, or a list): one session, questions from stdin", True),
    "info": ("server version and limits", False),
    "models": ("models served", False),
    "methods": ("pruning methods and their parameters", False),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one client command.

    It is used with ``parse_intermixed_args`` so that options may sit anywhere, also between
    the media and the question (``videoqa ask a.png b.png --images "Q"``).
    """
    helptext, with_session = _CLIENT_COMMANDS[name]
    parents = [_connection_parser(), *([_session_parser()] if with_session else [])]
    parser = argparse.ArgumentParser(prog=f"videoqa {name}", description=helptext, parents=parents)
    if name == "watch":
        parser.description = _WATCH_DESCRIPTION
        parser.add_argument(
            "media", nargs="+", metavar="DIR|FILE", help="a directory to poll for new files, or files in order"
        )
        parser.add_argument(
            "--interval", type=_positive_float, default=2.0, metavar="S", help="seconds between polls of DIR"
        )
        parser.add_argument("--question", default="", metavar="Q", help="ask Q after the upload and every append")
    elif with_session:
        parser.add_argument("media", nargs="+", metavar="VIDEO", help="video file, image directory or images")
    if name == "ask":
        parser.add_argument("question", metavar="QUESTION")
    handlers = {
        "ask": _cmd_ask,
        "chat": _cmd_chat,
        "watch": _cmd_watch,
        "info": _cmd_info,
        "models": _cmd_models,
        "methods": _cmd_methods,
    }
    parser.set_defaults(command=name, handler=handlers[name])
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: lists the commands; each command has its own parser."""
    parser = argparse.ArgumentParser(
        prog="videoqa", description="Ask questions about videos served by a videoqa deployment."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (helptext, _) in _CLIENT_COMMANDS.items():
        sub.add_parser(name, help=helptext)
    for name, helptext in _SERVER_HELP.items():
        sub.add_parser(name, help=f"{helptext} (needs the server extra)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("videoqa")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# --------------------------------------------------------------------------------------------
# Commands


def _client(args: argparse.Namespace) -> VideoQAClient:
    credentials = None
    if args.tls or args.ca_cert or args.client_cert:
        credentials = tls_credentials(args.ca_cert, args.client_cert, args.client_key)
    return VideoQAClient(args.server, timeout=args.timeout, credentials=credentials, api_key=args.token or None)


def _media(args: argparse.Namespace) -> str | list[str]:
    if len(args.media) == 1 and not args.images:
        return args.media[0]  # a video, or a directory of images
    return list(args.media)


def _session_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "images": args.images,
        "model": args.model,
        "sampling": FrameSampling(
            num_frames=args.frames,
            fps=args.fps,
            max_frames=args.max_frames,
            max_resolution=args.max_resolution,
        ),
        "pruning": Pruning(
            method=args.method,
            params=dict(args.param),
            budget=args.budget,
            max_visual_tokens=args.max_visual_tokens,
            reduction=Reduction(args.reduction, dict(args.reduction_param), args.retention),
        ),
        "image_fps": args.image_fps,
    }


def _generation(args: argparse.Namespace) -> Generation:
    return Generation(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )


def _stream_answer(events: Iterator[Event], *, echo: bool, on_event: Callable[[Event], None] | None = None) -> Answer:
    """Consumes one answer's events, writing tokens to stdout as they come when ``echo``.

    Closes ``events`` (cancelling the call) however it ends, Ctrl-C included.
    """
    collected: list[Event] = []
    wrote_text = ""
    try:
        with closing(events):  # type: ignore[type-var]
            for event in events:
                if on_event is not None:
                    on_event(event)
                if isinstance(event, (Token, TurnStats)):
                    collected.append(event)
                if echo and isinstance(event, Token) and event.text:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                    wrote_text = event.text
    finally:
        if wrote_text and not wrote_text.endswith("\n"):
            sys.stdout.write("\n")
            sys.stdout.flush()
    return Answer.from_events(collected)


def _finish_session(client: VideoQAClient, session_id: str, keep: bool) -> None:
    """Deletes the session (best effort) or tells its id."""
    if keep:
        print(f"session {session_id} kept", file=sys.stderr)
        return
    with suppress(VideoQAError):
        client.delete_session(session_id, timeout=_DELETE_TIMEOUT_S)


def _cmd_ask(args: argparse.Namespace) -> int:
    display = ProgressDisplay()
    session_id = ""

    def on_event(event: Event) -> None:
        nonlocal session_id
        if isinstance(event, Progress):
            display.progress(event)
        else:
            display.close()
            if isinstance(event, SessionCreated):
                session_id = event.session.session_id

    with _client(args) as client:
        events = client.stream_create_session(
            _media(args),
            question=args.question,
            generation=_generation(args),
            on_upload=display.upload,
            **_session_options(args),
        )
        try:
            answer = _stream_answer(events, echo=not args.json, on_event=on_event)
        except BaseException:
            if session_id:
                _finish_session(client, session_id, args.keep)
            raise
        finally:
            display.close()
        if args.json:
            stats = dataclasses.asdict(answer.stats) if answer.stats else None
            print(json.dumps({"answer": answer.text, "session_id": session_id, "stats": stats}, ensure_ascii=False))
        elif answer.stats is not None:
            print(stats_line(answer.stats), file=sys.stderr)
        if session_id:
            _finish_session(client, session_id, args.keep)
    return 0


def _read_question() -> str | None:
    """The next line of stdin (with a ``> `` prompt on a terminal); None at end of input."""
    if sys.stdin.isatty():
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line if line else None


_CHAT_HELP = (
    "commands: /add PATH appends a video (or an image, or a directory of images) to the session as a new "
    "segment, /info shows the session, /quit (or end of input) ends and deletes it"
)
#: Status codes after which a session cannot go on (it is gone, or not the caller's).
_SESSION_LOST = frozenset(
    {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}
)


def _is_images(path: Path, images: bool) -> bool:
    """Whether ``path`` is sent as images: ``--images``, a directory, or an image file's suffix."""
    return images or path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES


def _append_file(session: Session, path: Path, args: argparse.Namespace) -> SessionInfo:
    """Appends one file (or a directory of images) to ``session`` as a new segment, with the
    command's sampling options; returns the info it had before."""
    before = session.info
    display = ProgressDisplay()
    try:
        options = _session_options(args)
        as_images = _is_images(path, args.images)
        session.append(
            None if as_images else path,
            images=path if as_images else None,
            sampling=options["sampling"],
            image_fps=options["image_fps"],
            on_progress=display.progress,
            on_upload=display.upload,
        )
    finally:
        display.close()
    return before


def _print_segment(before: SessionInfo | None, after: SessionInfo, path: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps(segment_record(before, after, str(path)), ensure_ascii=False))
    else:
        print(segment_line(before, after, str(path)))
    sys.stdout.flush()


def _chat_add(session: Session, rest: str, args: argparse.Namespace) -> None:
    """``/add PATH...``: appends each path as a new segment; errors are reported, the chat goes on."""
    try:
        paths = shlex.split(rest)
    except ValueError:
        paths = [rest.strip()]
    if not paths:
        print(f"usage: /add PATH; {_CHAT_HELP}", file=sys.stderr)
        return
    for name in paths:
        path = Path(name).expanduser()
        try:
            before = _append_file(session, path, args)
        except KeyboardInterrupt:
            print("(cancelled)", file=sys.stderr)
            return
        except VideoQAError as e:
            print(f"error: {e.code.name}: {e.details} ({path} not added)", file=sys.stderr)
            return
        except (OSError, ValueError) as e:
            print(f"error: {e} ({path} not added)", file=sys.stderr)
            return
        _print_segment(before, session.info, path, args.json)


def _cmd_chat(args: argparse.Namespace) -> int:
    display = ProgressDisplay()
    with _client(args) as client:
        try:
            session = client.create_session(
                _media(args), on_progress=display.progress, on_upload=display.upload, **_session_options(args)
            )
        finally:
            display.close()
        info = session.info
        if not args.json:
            print(
                f"session {session.id}: {len(info.frames.indices)} frames, "
                f"{info.visual_tokens_after} visual tokens; {_CHAT_HELP}",
                file=sys.stderr,
            )
        generation = _generation(args)
        try:
            while True:
                line = _read_question()
                if line is None:
                    break
                question = line.strip()
                if not question:
                    continue
                if question in ("/quit", "/exit"):
                    break
                if question == "/info":
                    info = session.refresh()
                    print(_to_json(info) if args.json else describe_session(info))
                    continue
                command, *rest = question.split(maxsplit=1)
                if command == "/add":
                    _chat_add(session, rest[0] if rest else "", args)
                    continue
                if question.startswith("/"):
                    print(f"unknown command {question}; {_CHAT_HELP}", file=sys.stderr)
                    continue
                try:
                    answer = _stream_answer(session.ask(question, generation), echo=not args.json)
                except KeyboardInterrupt:
                    print("(cancelled)", file=sys.stderr)
                    continue
                if args.json:
                    stats = dataclasses.asdict(answer.stats) if answer.stats else None
                    record = {"question": question, "answer": answer.text, "session_id": session.id}
                    print(json.dumps({**record, "stats": stats}, ensure_ascii=False))
                elif answer.stats is not None:
                    print(stats_line(answer.stats), file=sys.stderr)
        except KeyboardInterrupt:
            print(file=sys.stderr)
        finally:
            _finish_session(client, session.id, args.keep)
    return 0


_WATCH_DESCRIPTION = (
    "Follow media as it comes, as one session: the first file creates it, every further file is "
    "appended to it as a new segment (its frames continue the session's clock). With a directory, "
    "it is polled every --interval seconds and new files are appended in name order once their size "
    "holds still between two polls (hidden files and *.part/*.tmp are skipped); with files, they are "
    "taken in the order given. Meanwhile, every line typed on stdin is a question about the media so "
    "far (its answer is streamed; /info shows the session). End of input (Ctrl-D) or /quit ends the watch "
    "once the listed files are all sent, Ctrl-C at once; the session is then deleted unless --keep. "
    "Sampling options apply to each file; --question is asked after the upload and after every append."
)
_WATCH_HELP = (
    "type a question and Enter at any time; /info shows the session; end of input (Ctrl-D), /quit or Ctrl-C "
    "ends the watch"
)
_PARTIAL_SUFFIXES = frozenset({".part", ".partial", ".tmp", ".crdownload"})


class DirectoryFeed:
    """New files of a directory, in name order, each once complete.

    A file counts as complete when its size (not zero) and modification time are those it had
    at the previous poll; a file that is not complete yet holds back those after it, so that
    files are taken in name order. Hidden files, ``~`` files and partial downloads are skipped.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._taken: set[str] = set()
        self._stamps: dict[str, tuple[int, int]] = {}

    @staticmethod
    def watched(path: Path) -> bool:
        name = path.name
        return (
            not name.startswith((".", "~"))
            and path.suffix.lower() not in _PARTIAL_SUFFIXES
            and (path.is_file() or path.is_dir())
        )

    def poll(self) -> list[Path]:
        """The files that became complete since the last poll, in name order."""
        ready: list[Path] = []
        stamps: dict[str, tuple[int, int]] = {}
        held = False
        candidates = [p for p in self.directory.iterdir() if p.name not in self._taken and self.watched(p)]
        for path in sorted(candidates, key=natural_key):
            if path.is_dir():
                continue  # a directory of images would need its own rule for completeness
            try:
                st = path.stat()
            except OSError:  # gone since it was listed
                continue
            stamp = (st.st_size, st.st_mtime_ns)
            stamps[path.name] = stamp
            if not held and st.st_size > 0 and self._stamps.get(path.name) == stamp:
                ready.append(path)
                self._taken.add(path.name)
            else:
                held = True
        self._stamps = stamps
        return ready


class LineReader:
    """Lines of a text stream read by a daemon thread, so that waiting for one can time out.

    :meth:`get` returns a line, ``None`` at end of input, or raises :class:`queue.Empty`.
    """

    def __init__(self, stream: TextIO) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        thread = threading.Thread(target=self._read, args=(stream,), name="videoqa-stdin", daemon=True)
        thread.start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._lines.put(line)
        except (OSError, ValueError):  # closed under us
            pass
        finally:
            self._lines.put(None)

    def get(self, timeout: float | None) -> str | None:
        """The next line, waiting at most ``timeout`` seconds (``None``: until there is one)."""
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.25 if until is None else until - time.monotonic()
            if wait <= 0:
                return self._lines.get_nowait()
            with suppress(queue.Empty):
                # In short slices, so that Ctrl-C is noticed between them.
                return self._lines.get(timeout=min(wait, 0.25))


def _watch_answer(session: Session, question: str, args: argparse.Namespace) -> None:
    """Streams the answer to one question of a watch (Ctrl-C cancels it, the watch goes on)."""
    try:
        answer = _stream_answer(session.ask(question, _generation(args)), echo=not args.json)
    except KeyboardInterrupt:
        print("(cancelled)", file=sys.stderr)
        return
    if args.json:
        stats = dataclasses.asdict(answer.stats) if answer.stats else None
        record = {"question": question, "answer": answer.text, "session_id": session.id}
        print(json.dumps({**record, "segments": session.info.segments, "stats": stats}, ensure_ascii=False))
    elif answer.stats is not None:
        print(stats_line(answer.stats), file=sys.stderr)
    sys.stdout.flush()


def _cmd_watch(args: argparse.Namespace) -> int:
    paths = [Path(p).expanduser() for p in args.media]
    directories = [p for p in paths if p.is_dir()]
    if directories and len(paths) > 1:
        raise ValueError("watch takes one directory, or files, not both")
    feed = DirectoryFeed(directories[0]) if directories else None
    pending: deque[Path] = deque(() if feed is not None else paths)
    for path in pending:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
    lines = LineReader(sys.stdin)
    held: list[str] = []  # questions typed before the session exists
    session: Session | None = None
    ended = False  # end of input, or /quit
    next_poll = time.monotonic()
    with _client(args) as client:
        try:
            while True:
                # Questions: those waiting are answered before any more media; with nothing to
                # send, wait for one until the next poll (for listed files: until there is one).
                if pending or ended:
                    wait: float | None = 0.0
                elif feed is not None:
                    wait = max(0.0, next_poll - time.monotonic())
                else:
                    wait = None
                while not ended:
                    try:
                        line = lines.get(wait)
                    except queue.Empty:
                        break
                    wait = 0.0
                    question = (line or "").strip()
                    if line is None or question in ("/quit", "/exit"):
                        ended = True
                    elif question == "/info":
                        if session is None:
                            print("no session yet: waiting for the first file", file=sys.stderr)
                        else:
                            info = session.refresh()
                            print(_to_json(info) if args.json else describe_session(info))
                    elif question.startswith("/"):
                        print(f"unknown command {question}; {_WATCH_HELP}", file=sys.stderr)
                    elif question:
                        if session is None:
                            held.append(question)
                        else:
                            _watch_answer(session, question, args)
                if ended and (feed is not None or not pending):
                    break
                if feed is not None and time.monotonic() >= next_poll:
                    pending.extend(feed.poll())
                    next_poll = time.monotonic() + args.interval
                if pending:
                    path = pending.popleft()
                    if session is None:
                        session = _watch_create(client, path, args)
                        questions = held + ([args.question] if args.question else [])
                        held = []
                    else:
                        try:
                            before = _append_file(session, path, args)
                        except VideoQAError as e:
                            if e.code in _SESSION_LOST:
                                raise
                            print(f"error: {e.code.name}: {e.details} ({path} skipped)", file=sys.stderr)
                            continue
                        except (OSError, ValueError) as e:  # e.g. removed before it was read
                            print(f"error: {e} ({path} skipped)", file=sys.stderr)
                            continue
                        _print_segment(before, session.info, path, args.json)
                        questions = [args.question] if args.question else []
                    for question in questions:
                        _watch_answer(session, question, args)
        except KeyboardInterrupt:
            print(file=sys.stderr)
        finally:
            if session is not None:
                _finish_session(client, session.id, args.keep)
    return 0


def _watch_create(client: VideoQAClient, path: Path, args: argparse.Namespace) -> Session:
    display = ProgressDisplay()
    try:
        options = {**_session_options(args), "images": _is_images(path, args.images)}
        session = client.create_session(path, on_progress=display.progress, on_upload=display.upload, **options)
    finally:
        display.close()
    if not args.json:
        print(f"session {session.id}; {_WATCH_HELP}", file=sys.stderr)
    _print_segment(None, session.info, path, args.json)
    return session


def _cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.server_info()
    if args.json:
        print(_to_json(info))
        return 0
    limits = info.limits
    print(f"version         {info.version} (api {info.api_version})")
    print(f"default model   {info.default_model}")
    print(f"session store   {info.session_store}")
    print(f"workers         {info.workers}")
    print(f"max upload      {human_bytes(limits.max_upload_bytes)}")
    print(f"frames          default {limits.default_frames}, max {limits.max_frames}")
    print(f"session frames  max {limits.max_session_frames or 'unlimited'} (upload and appended media)")
    print(f"prefill chunk   {limits.prefill_chunk_frames or 'whole video'} frames")
    print(f"images          max {limits.max_images}")
    print(f"resolution      max {limits.max_resolution} px")
    print(f"question        max {limits.max_question_chars} chars")
    print(f"new tokens      default {limits.default_max_new_tokens}, max {limits.max_new_tokens}")
    for name, version in sorted(info.runtime_versions.items()):
        print(f"{name:<15} {version}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = client.list_models()
    if args.json:
        print(_to_json(models))
        return 0
    for m in models:
        default = " (default)" if m.is_default else ""
        print(f"{m.id}{default}")
        print(f"  family {m.family}, dtype {m.dtype}, revision {m.revision}")
        print(f"  KV cache {human_bytes(m.kv_bytes_per_token)} per token")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    with _client(args) as client:
        methods = client.list_methods()
        reductions = client.list_reductions()
    if args.json:
        print(_to_json({"methods": methods, "reductions": reductions}))
        return 0
    for m in methods:
        default = " (default)" if m.is_default else ""
        mode = " [progressive: caps, appended media]" if m.progressive else " [one-shot]"
        print(f"{m.name}{default}{mode}: {m.description}")
        for p in m.params:
            kind = "int" if p.integer else "float"
            bounds = f"default {p.default:g}, in [{p.min:g}, {p.max:g}]"
            print(f"  --param {p.name}=<{kind}>  {bounds}  {p.description}")
    if reductions:
        print("\nreductions before the language model (--reduction NAME --retention F):")
    for m in reductions:
        print(f"{m.name}: {m.description}")
        for p in m.params:
            kind = "int" if p.integer else "float"
            bounds = f"default {p.default:g}, in [{p.min:g}, {p.max:g}]"
            print(f"  --reduction-param {p.name}=<{kind}>  {bounds}  {p.description}")
    return 0


def _run_server_command(command: str, rest: list[str]) -> int:
    """Hands a server command to its module (``SERVER_COMMANDS``), arguments untouched."""
    import importlib

    try:
        module = importlib.import_module(SERVER_COMMANDS[command])
    except ImportError as e:
        print(SERVER_EXTRA_HINT, file=sys.stderr)
        print(f"({e})", file=sys.stderr)
        return EXIT_USAGE
    result = module.main([command, *rest])
    return result if isinstance(result, int) else 0


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``videoqa`` console script; returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in SERVER_COMMANDS:
        return _run_server_command(arguments[0], arguments[1:])
    if not arguments or arguments[0] not in _CLIENT_COMMANDS:
        parser = build_parser()
        parser.parse_args(arguments)  # --version, --help or a usage error: exits
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = command_parser(arguments[0]).parse_intermixed_args(arguments[1:])
    try:
        return int(args.handler(args))
    except VideoQAError as e:
        print(f"error: {e.code.name}: {e.details}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
