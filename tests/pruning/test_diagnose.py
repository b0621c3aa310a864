"""`videoqa diagnose` prints the per-frame attention and kept-token shares and writes the PNG."""

from __future__ import annotations

import json

from PIL import Image

from tests.media import make_video
from videoqa.client.cli import main as cli_main


def test_diagnose_writes_png_and_numbers(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    make_video(video, frames=32, size=(128, 96), fps=8)
    out = tmp_path / "plots" / "myopia.png"
    code = cli_main(
        [
            "diagnose",
            str(video),
            "--frames",
            "8",
            "--methods",
            "snapkv,das",
            "--budget",
            "0.25",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["attention"]) == 4  # one row per layer of the default model (videoqa-demo)
    spans = len(result["attention"][0])
    assert spans == 4  # 8 frames, Qwen's 2-frame temporal patches
    for row in result["attention"]:
        assert abs(sum(row) - 1) < 1e-4
    assert set(result["kept"]) == {"snapkv", "das"}
    for shares in result["kept"].values():
        assert len(shares) == spans and abs(sum(shares) - 1) < 1e-4
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 300


def test_diagnose_runs_on_the_new_families(tmp_path, capsys):
    """Qwen3-VL (frame times between the spans) and the hybrid Qwen3.5 (one row per layer with
    attention: its linear-attention layers have no attention over frames)."""
    video = tmp_path / "clip.mp4"
    make_video(video, frames=32, size=(128, 96), fps=8)
    for model in ("tiny-qwen3-vl", "tiny-qwen3.5"):
        argv = ["diagnose", str(video), "--model", model, "--frames", "8", "--methods", "das", "--budget", "0.25"]
        assert cli_main([*argv, "--out", str(tmp_path / f"{model}.png"), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert len(result["attention"]) == 2 and all(len(row) == 4 for row in result["attention"]), model
        assert all(abs(sum(row) - 1) < 1e-4 for row in result["attention"])
        assert abs(sum(result["kept"]["das"]) - 1) < 1e-4
