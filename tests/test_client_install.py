"""The base install is the client only: a fresh virtualenv gets no torch, and its client works."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from tests.media import make_video

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from videoqa.client import FrameSampling, Generation, VideoQAClient
with VideoQAClient(sys.argv[1]) as client:
    session = client.create_session(sys.argv[2], sampling=FrameSampling(num_frames=4),
                                    question="what is it?", generation=Generation(max_new_tokens=3))
    assert session.first_answer is not None and session.first_answer.stats.turn == 1
    session.delete()
heavy = [m for m in ("torch", "transformers", "decord", "numpy", "pydantic") if m in sys.modules]
assert not heavy, heavy
print("client ok")
"""


@pytest.mark.slow
def test_client_install_without_torch(tmp_path, server):
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    missing = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert missing.returncode != 0, "the base install must not pull in torch"
    video = tmp_path / "clip.mp4"
    make_video(video, frames=12, size=(64, 64), fps=6)
    run = subprocess.run(
        [str(python), "-c", SCRIPT, server.address, str(video)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 0 and "client ok" in run.stdout, run.stderr[-3000:]
    cli = subprocess.run([str(env / "bin" / "videoqa"), "serve"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "pip install 'videoqa[server]'" in cli.stderr
