"""The base install is the client only: a fresh virtualenv gets no torch, and its client works; the
wheel is small (no demo weights), typed, and carries its licence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
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

#: What the videoqa wheel is built from. A copy, so that the build neither reads a stale build/ or
#: *.egg-info of the checkout (setuptools reuses them) nor leaves its own behind.
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "proto", "client", "service", "worker", "lab"]
IGNORE = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.pyc")


def source_copy(directory: Path) -> Path:
    directory.mkdir(parents=True)
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, directory / name, ignore=IGNORE)
        else:
            shutil.copy2(ROOT / name, directory / name)
    return directory


def check_wheel(wheel: Path) -> None:
    """The base wheel: typed packages marked, the licence inside, and no demo weights (their own
    distribution, videoqa-demo-model)."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licence = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licence and "Apache License" in archive.read(licence[0]).decode()
    for package in ("client", "v1", "internal/v1"):
        assert f"videoqa/{package}/py.typed" in names
    assert not [n for n in names if "/demo/" in n or n.endswith((".safetensors", ".bin"))]
    assert "videoqa/lab/harness.py" in names and not [n for n in names if n.startswith("videoqa/worker/lab/")]
    assert wheel.stat().st_size < 2 << 20, f"{wheel.stat().st_size} bytes"


@pytest.mark.slow
def test_client_install_without_torch(tmp_path, server):
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    pip = [str(python), "-m", "pip", "-q", "--disable-pip-version-check"]
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(source_copy(tmp_path / "src"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("videoqa-*.whl")
    check_wheel(wheel)
    install = subprocess.run([*pip, "install", str(wheel)], capture_output=True, text=True, timeout=600)
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


@pytest.mark.slow
def test_demo_weights_are_their_own_distribution(tmp_path):
    """worker/model/demo builds the videoqa-demo-model wheel the server extra asks for."""
    demo = tmp_path / "demo"
    shutil.copytree(ROOT / "worker" / "model" / "demo", demo, ignore=IGNORE)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "-q", "wheel", "--no-deps", "-w", str(tmp_path), str(demo)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("videoqa_demo_model-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("__init__.py", "config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert f"videoqa_demo_model/{name}" in names
    assert not [n for n in names if n.endswith("pyproject.toml")]
