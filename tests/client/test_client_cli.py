"""The ``videoqa`` command line, run in-process against the scripted server."""

from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from videoqa.client.cli import SERVER_EXTRA_HINT, DirectoryFeed, human_bytes, main

if TYPE_CHECKING:
    from tests.client.conftest import RunningServer


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x01video" * 500)
    return path


def test_ask_streams_answer_and_deletes_session(
    scripted_server: RunningServer, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "ask",
            str(video),
            "What happens?",
            "--server",
            scripted_server.target,
            "--frames",
            "8",
            "--max-frames",
            "32",
            "--max-resolution",
            "448",
            "--method",
            "snapkv",
            "--budget",
            "0.25",
            "--param",
            "window=16",
            "--param",
            "pool=2",
            "--max-new-tokens",
            "20",
            "--temperature",
            "0.7",
            "--top-p",
            "0.9",
            "--seed",
            "5",
            "--model",
            "m1",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == "Answer to: What happens?\n"
    assert "8 frames · visual tokens 1024→256 (25% kept) · KV 64.0 MiB→16.0 MiB · TTFT 0.12 s" in err
    (upload,) = scripted_server.servicer.uploads
    assert upload.video == video.read_bytes()
    spec = upload.spec
    assert spec.question == "What happens?" and spec.model == "m1"
    assert spec.sampling.num_frames == 8 and spec.sampling.max_frames == 32 and spec.sampling.max_resolution == 448
    assert spec.pruning.method == "snapkv" and dict(spec.pruning.params) == {"window": 16.0, "pool": 2.0}
    assert spec.pruning.budget == pytest.approx(0.25)
    gen = spec.generation
    assert gen.max_new_tokens == 20 and gen.seed == 5
    assert gen.temperature == pytest.approx(0.7) and gen.top_p == pytest.approx(0.9)
    assert scripted_server.servicer.sessions == {} and len(scripted_server.servicer.deleted) == 1


def test_ask_json(scripted_server: RunningServer, video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", str(video), "Why?", "--json", "--server", scripted_server.target, "--fps", "2"]) == 0
    out, _ = capsys.readouterr()
    record = json.loads(out)
    assert set(record) == {"answer", "session_id", "stats"}
    assert record["answer"] == "Answer to: Why?"
    assert record["session_id"] == scripted_server.servicer.deleted[0]
    assert record["stats"]["visual_tokens_after"] == 256
    assert record["stats"]["timings"]["time_to_first_token_seconds"] == 0.125
    assert scripted_server.servicer.uploads[0].spec.sampling.fps == 2.0


def test_ask_keep_and_env_server(
    scripted_server: RunningServer,
    video: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIDEOQA_SERVER", scripted_server.target)
    assert main(["ask", str(video), "Q", "--keep"]) == 0
    _, err = capsys.readouterr()
    (session_id,) = scripted_server.servicer.sessions
    assert f"session {session_id} kept" in err
    assert scripted_server.servicer.deleted == []


def test_ask_images(scripted_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (1, 2, 10):
        (frames / f"img{i}.png").write_bytes(b"png%d" % i)
    assert main(["ask", str(frames), "Q", "--server", scripted_server.target, "--image-fps", "4"]) == 0
    files = [str(frames / "img10.png"), str(frames / "img1.png")]
    # Options may sit between the media and the question.
    assert main(["ask", files[0], "--images", files[1], "--server", scripted_server.target, "Q"]) == 0
    assert main(["ask", files[0], "--images", "Q", "--server", scripted_server.target]) == 0
    directory, listed, single = scripted_server.servicer.uploads
    assert directory.images == [b"png1", b"png2", b"png10"] and directory.spec.image_fps == 4.0
    assert listed.images == [b"png10", b"png1"]
    assert single.images == [b"png10"] and single.spec.media_kind == 2


def test_ask_error_is_one_line(scripted_server: RunningServer, video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scripted_server.servicer.fail["CreateSession"] = [grpc.StatusCode.INVALID_ARGUMENT]
    assert main(["ask", str(video), "Q", "--server", scripted_server.target]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == "error: INVALID_ARGUMENT: scripted INVALID_ARGUMENT"


def test_ask_error_mid_answer_still_deletes(
    scripted_server: RunningServer, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scripted_server.servicer.fail_mid["CreateSession.answer"] = grpc.StatusCode.DATA_LOSS
    assert main(["ask", str(video), "Q", "--server", scripted_server.target]) == 1
    out, err = capsys.readouterr()
    assert out == "Answer\n"  # the partial answer, ended with a newline
    assert err.strip() == "error: DATA_LOSS: scripted mid-stream DATA_LOSS"
    assert len(scripted_server.servicer.deleted) == 1 and scripted_server.servicer.sessions == {}


def test_ask_missing_file(scripted_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", str(tmp_path / "nope.mp4"), "Q", "--server", scripted_server.target]) == 1
    assert "error: no such file" in capsys.readouterr().err


def test_ctrl_c_during_answer_cancels_and_deletes(
    scripted_server: RunningServer,
    video: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    class InterruptingStdout(io.StringIO):
        """Raises KeyboardInterrupt, as Ctrl-C would, when the answer starts being written."""

        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    scripted_server.servicer.token_delay = 5.0
    monkeypatch.setattr(sys, "stdout", InterruptingStdout())
    assert main(["ask", str(video), "Q", "--server", scripted_server.target]) == 130
    assert scripted_server.servicer.cancelled.wait(2.0)
    assert len(scripted_server.servicer.deleted) == 1 and scripted_server.servicer.sessions == {}
    assert "interrupted" in capsys.readouterr().err


def test_chat_reads_questions_from_stdin(
    scripted_server: RunningServer,
    video: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("first?\n\n/info\nsecond?\n/quit\nnever asked\n"))
    assert main(["chat", str(video), "--server", scripted_server.target, "--budget", "0.5"]) == 0
    out, err = capsys.readouterr()
    assert "> " not in out  # no prompt when stdin is not a terminal
    assert out.startswith("Answer to: first?\n")
    assert "turns     1" in out and "pruning   default, budget 0.5" in out
    assert out.endswith("Answer to: second?\n")
    assert [a.question for a in scripted_server.servicer.asks] == ["first?", "second?"]
    assert scripted_server.servicer.uploads[0].spec.question == ""
    assert err.count("visual tokens 1024→256") == 2
    assert len(scripted_server.servicer.deleted) == 1


def test_chat_eof_ends_and_json(
    scripted_server: RunningServer,
    video: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("one?\ntwo?"))
    assert main(["chat", str(video), "--json", "--server", scripted_server.target]) == 0
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["answer"] for r in records] == ["Answer to: one?", "Answer to: two?"]
    assert [r["stats"]["turn"] for r in records] == [1, 2]
    assert len(scripted_server.servicer.deleted) == 1


def test_chat_keep(
    scripted_server: RunningServer,
    video: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["chat", str(video), "--keep", "--server", scripted_server.target]) == 0
    assert scripted_server.servicer.deleted == [] and len(scripted_server.servicer.sessions) == 1


def test_info_models_methods(scripted_server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--server", scripted_server.target]) == 0
    out = capsys.readouterr().out
    assert "version         0.1.0 (api v1)" in out and "max upload      1.0 GiB" in out
    assert main(["models", "--server", scripted_server.target]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-vl-3b (default)" in out and "36.0 KiB per token" in out
    assert main(["methods", "--server", scripted_server.target]) == 0
    out = capsys.readouterr().out
    assert "snapkv (default)" in out and "--param window=<int>  default 32, in [1, 512]" in out
    assert "evs: " in out and "--reduction-param threshold=<float>  default 0, in [0, 1]" in out
    for command in ("info", "models", "methods"):
        assert main([command, "--json", "--server", scripted_server.target]) == 0
        listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed["reductions"]] == ["evs"] and listed["methods"][0]["name"]


def test_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--server", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    with pytest.raises(SystemExit) as e:
        main(["ask", "v.mp4", "Q", "--param", "window"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["ask", "v.mp4", "Q", "--frames", "8", "--fps", "1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_server_commands_are_delegated_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    fake = types.ModuleType("videoqa.service.app")
    fake.main = lambda argv: calls.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "videoqa.service.app", fake)
    assert main(["serve", "--listen", "0.0.0.0:1", "-h", "pos"]) == 3
    assert main(["worker"]) == 3
    assert main(["frontend", "--", "--x"]) == 3
    assert calls == [["serve", "--listen", "0.0.0.0:1", "-h", "pos"], ["worker"], ["frontend", "--", "--x"]]


def test_server_commands_without_the_server_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "videoqa.service.app", None)  # makes the import fail
    assert main(["serve"]) == 2
    assert SERVER_EXTRA_HINT in capsys.readouterr().err


def test_human_bytes() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 << 30) == "3.0 GiB"
    assert human_bytes(5 << 40) == "5.0 TiB"


# --------------------------------------------------------------------------------------------
# Appending media: chat's /add and watch


def test_max_visual_tokens_option(scripted_server: RunningServer, video: Path) -> None:
    args = ["--server", scripted_server.target, "--method", "snapkv", "--budget", "0.2", "--max-visual-tokens", "64"]
    assert main(["ask", str(video), "Q", *args]) == 0
    pruning = scripted_server.servicer.uploads[0].spec.pruning
    assert pruning.method == "snapkv" and pruning.max_visual_tokens == 64
    with pytest.raises(SystemExit):
        main(["ask", str(video), "Q", "--max-visual-tokens", "-1"])


def test_chat_add_appends_a_segment_mid_conversation(
    scripted_server: RunningServer,
    video: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    part = tmp_path / "part two.mp4"
    part.write_bytes(b"second segment" * 100)
    image = tmp_path / "still.png"
    image.write_bytes(b"png bytes")
    script = [
        "before?",
        f'/add "{part}"',  # a quoted path with a space
        "after?",
        f"/add {tmp_path / 'missing.mp4'}",  # reported, the chat goes on
        f"/add {image}",  # an image file is appended as an image
        "/add",
        "/info",
        "last?",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(script) + "\n"))
    argv = ["chat", str(video), "--server", scripted_server.target, "--frames", "4", "--method", "snapkv"]
    assert main([*argv, "--max-visual-tokens", "32"]) == 0
    out, err = capsys.readouterr()
    servicer = scripted_server.servicer
    session_id = servicer.deleted[0]
    appended, still = servicer.appends
    assert appended.video == part.read_bytes() and appended.spec.session_id == session_id
    assert appended.spec.media_kind == 1 and appended.spec.sampling.num_frames == 4
    assert still.images == [b"png bytes"] and still.spec.media_kind == 2
    assert [a.question for a in servicer.asks] == ["before?", "after?", "last?"]
    assert servicer.uploads[0].spec.pruning.max_visual_tokens == 32
    lines = out.splitlines()
    assert lines[0] == "Answer to: before?"
    assert lines[1] == (
        f"segment 2 ({part}): +4 frames at 8.00, 9.00, 10.00, 11.00 s; session 12 frames, 256 visual tokens kept"
    )
    assert lines[2] == "Answer to: after?"
    assert lines[3].startswith(f"segment 3 ({image}): +1 frames at 12.00 s; session 13 frames")
    assert "segments  3 (the upload and 2 appended)" in out
    assert "media     video: 13 frames, 1 fps, 13.0 s" in out
    assert "frames    13 sampled at 448x252 over 0.0–12.0 s" in out
    assert "at most 32 visual tokens" in out
    assert lines[-1] == "Answer to: last?"
    assert "/add PATH appends a video" in err  # the help text shown at the start
    assert f"error: no such file: {tmp_path / 'missing.mp4'} ({tmp_path / 'missing.mp4'} not added)" in err
    assert "usage: /add PATH" in err


def test_chat_add_server_error_keeps_the_chat_going(
    scripted_server: RunningServer,
    video: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripted_server.servicer.fail["AppendMedia"] = [grpc.StatusCode.INVALID_ARGUMENT]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/add {video}\nstill there?\n/add {video}\n"))
    assert main(["chat", str(video), "--json", "--server", scripted_server.target]) == 0
    out, err = capsys.readouterr()
    assert "error: INVALID_ARGUMENT: scripted INVALID_ARGUMENT" in err
    answer, segment = (json.loads(line) for line in out.splitlines())
    assert answer["answer"] == "Answer to: still there?"
    assert segment["segment"] == 2 and segment["path"] == str(video)
    assert segment["frames_added"] == 4 and segment["timestamps"] == [8.0, 9.0, 10.0, 11.0]
    assert segment["frames"] == 12 and segment["session_id"] == scripted_server.servicer.deleted[0]
    assert scripted_server.servicer.attempts["AppendMedia"] == 2


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_watch_directory_appends_files_as_they_appear(
    scripted_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "seg1.mp4").write_bytes(b"first segment")
    read_fd, write_fd = os.pipe()
    stdin, typed = os.fdopen(read_fd, "r"), os.fdopen(write_fd, "w")
    monkeypatch.setattr(sys, "stdin", stdin)
    servicer = scripted_server.servicer
    argv = ["watch", str(folder), "--server", scripted_server.target, "--interval", "0.05", "--frames", "4"]
    argv += ["--method", "snapkv", "--budget", "0.5", "--max-visual-tokens", "64", "--question", "now?"]
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    runner.start()
    try:
        # The first file creates the session, then the standing question is asked.
        assert _wait_for(lambda: len(servicer.asks) == 1)
        assert servicer.appends == []
        # A file appears while the watch runs (written under a hidden name, then renamed), with a
        # partial download and a hidden file beside it that must be left alone.
        (folder / "seg10.mp4.part").write_bytes(b"partial")
        (folder / ".hidden.mp4").write_bytes(b"hidden")
        (folder / ".seg2.mp4").write_bytes(b"second segment")
        os.replace(folder / ".seg2.mp4", folder / "seg2.mp4")
        assert _wait_for(lambda: len(servicer.asks) == 2)
        typed.write("what changed?\n")
        typed.flush()
        assert _wait_for(lambda: len(servicer.asks) == 3)
    finally:
        typed.close()  # end of input ends the watch
        runner.join(10.0)
        stdin.close()
    assert not runner.is_alive() and result == [0]
    (upload,) = servicer.uploads
    assert upload.video == b"first segment" and upload.spec.sampling.num_frames == 4
    assert upload.spec.pruning.max_visual_tokens == 64 and upload.spec.pruning.method == "snapkv"
    (append,) = servicer.appends
    assert append.video == b"second segment" and append.spec.sampling.num_frames == 4
    assert append.spec.session_id == servicer.deleted[0]
    assert [a.question for a in servicer.asks] == ["now?", "now?", "what changed?"]
    assert servicer.sessions == {}  # deleted at the end
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"segment 1 ({folder / 'seg1.mp4'}): +8 frames at 0.00, 1.00, 2.00, 3.00, 4.00, 5.00, 6.00, 7.00 s; "
        "session 8 frames, 256 visual tokens kept",
        "Answer to: now?",
        f"segment 2 ({folder / 'seg2.mp4'}): +4 frames at 8.00, 9.00, 10.00, 11.00 s; "
        "session 12 frames, 256 visual tokens kept",
        "Answer to: now?",
        "Answer to: what changed?",
    ]
    assert "type a question" in err


def test_watch_listed_files_skips_a_failed_append_and_keeps(
    scripted_server: RunningServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = []
    for name in ("c.mp4", "a.mp4", "b.mp4"):  # listed order, not name order
        files.append(tmp_path / name)
        files[-1].write_bytes(name.encode() * 10)
    servicer = scripted_server.servicer
    servicer.fail["AppendMedia"] = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    monkeypatch.setattr(sys, "stdin", io.StringIO("typed?\n"))
    argv = ["watch", *map(str, files), "--server", scripted_server.target, "--json", "--keep", "--question", "now?"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert servicer.uploads[0].video == b"c.mp4" * 10
    assert [a.video for a in servicer.appends] == [b"a.mp4" * 10, b"b.mp4" * 10]
    assert f"error: RESOURCE_EXHAUSTED: scripted RESOURCE_EXHAUSTED ({files[1]} skipped)" in err
    (session_id,) = servicer.sessions  # kept
    assert servicer.deleted == [] and servicer.sessions[session_id].segments == 2
    records = [json.loads(line) for line in out.splitlines()]
    segments = [r for r in records if "segment" in r and "answer" not in r]
    assert [(r["segment"], r["path"]) for r in segments] == [(1, str(files[0])), (2, str(files[2]))]
    answers = [r for r in records if "answer" in r]
    # The standing question after each media piece that arrived; the typed one whenever it was read.
    assert sorted(r["question"] for r in answers) == ["now?", "now?", "typed?"]
    assert all(r["session_id"] == session_id for r in answers)


def test_watch_usage_errors(
    scripted_server: RunningServer,
    video: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["watch", str(tmp_path), str(video), "--server", scripted_server.target]) == 1
    assert "one directory, or files" in capsys.readouterr().err
    assert main(["watch", str(tmp_path / "nope.mp4"), "--server", scripted_server.target]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["watch", str(tmp_path), "--interval", "0"])
    # An empty directory and end of input at once: no session is ever created.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["watch", str(empty), "--server", scripted_server.target, "--interval", "0.01"]) == 0
    assert scripted_server.servicer.uploads == []


def test_directory_feed_takes_complete_files_in_name_order(tmp_path: Path) -> None:
    feed = DirectoryFeed(tmp_path)
    assert feed.poll() == []
    (tmp_path / "seg10.mp4").write_bytes(b"ten")
    (tmp_path / "seg2.mp4").write_bytes(b"")  # still empty: not complete
    (tmp_path / ".seg3.mp4").write_bytes(b"hidden")
    (tmp_path / "seg4.mp4.part").write_bytes(b"partial")
    assert feed.poll() == []  # first sight of each file
    assert feed.poll() == []  # seg10 is stable, but seg2 (before it) is not complete yet
    (tmp_path / "seg2.mp4").write_bytes(b"two")
    assert feed.poll() == []  # seg2 changed since the last poll
    assert feed.poll() == [tmp_path / "seg2.mp4", tmp_path / "seg10.mp4"]
    assert feed.poll() == []  # each file once
    (tmp_path / "seg1.mp4").write_bytes(b"late")
    assert feed.poll() == []
    assert feed.poll() == [tmp_path / "seg1.mp4"]


def test_watch_ctrl_c_ends_and_deletes(
    scripted_server: RunningServer, video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from videoqa.client import cli

    calls: list[float | None] = []

    def get(self: cli.LineReader, timeout: float | None) -> str | None:
        calls.append(timeout)
        if len(calls) == 1:
            raise queue.Empty  # nothing typed yet: the file is sent
        raise KeyboardInterrupt  # then Ctrl-C while waiting for a question

    monkeypatch.setattr(cli.LineReader, "get", get)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["watch", str(video), "--server", scripted_server.target]) == 0
    assert calls == [0.0, None]  # with every listed file sent, it waits for questions without a limit
    assert len(scripted_server.servicer.uploads) == 1 and len(scripted_server.servicer.deleted) == 1
    assert scripted_server.servicer.sessions == {}
