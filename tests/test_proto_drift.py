"""The committed generated code must match what protoc makes from proto/ (run `make proto`)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ["videoqa/v1/videoqa.proto", "videoqa/internal/v1/worker.proto"]


def test_generated_code_matches_protos(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    args = [
        "protoc",
        "-I",
        str(ROOT / "proto"),
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        *(str(ROOT / "proto" / p) for p in PROTOS),
    ]
    assert protoc.main(args) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        committed = ROOT / "proto" / rel
        assert committed.exists(), f"{rel} is not committed; run `make proto`"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale; run `make proto`"
