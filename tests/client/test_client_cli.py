"""The ``videoqa`` command line, run in-process against the scripted server."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from videoqa.client.cli import SERVER_EXTRA_HINT, human_bytes, main

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
    for command in ("info", "models", "methods"):
        assert main([command, "--json", "--server", scripted_server.target]) == 0
        json.loads(capsys.readouterr().out)


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
