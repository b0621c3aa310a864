"""The chart lints and renders with the real helm 3 binary, and the manifests are what we expect."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "videoqa"


def helm_binary() -> str:
    candidates = [os.environ.get("VIDEOQA_HELM"), str(Path(sys.executable).parent / "helm"), shutil.which("helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    if os.environ.get("CI"):
        pytest.fail("helm is missing in CI (`make helm` fetches it)")
    pytest.skip("no helm binary (run `make helm`)")


def render(*args: str) -> list[dict]:
    helm = helm_binary()
    lint = subprocess.run([helm, "lint", "--strict", str(CHART), *args], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run([helm, "template", "t", str(CHART), *args], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_default_chart_renders_grpc_probes_and_non_root():
    docs = {doc["kind"]: doc for doc in render()}
    assert set(docs) == {"Deployment", "Service"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["serve", "--listen=0.0.0.0:50051"]
    assert "--model=videoqa-demo" in container["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "grpc"


def test_gpu_values_reach_the_pod():
    docs = {
        doc["kind"]: doc
        for doc in render(
            "--set",
            "device=cuda:0",
            "--set",
            "dtype=bfloat16",
            "--set-string",
            "resources.limits.nvidia\\.com/gpu=1",
            "--set",
            "models={tiny-qwen2.5-vl,/models/qwen2-vl-7b}",
            "--set-string",
            "env.VIDEOQA_MAX_FRAMES=64",
        )
    }
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {"--device=cuda:0", "--dtype=bfloat16", "--model=/models/qwen2-vl-7b"} <= set(container["args"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "VIDEOQA_MAX_FRAMES", "value": "64"} in container["env"]
