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
