"""The pruning-overhead benchmark runs end to end in its quick mode and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str, *args: str) -> None:
    """Run ``bench/<script>`` in its quick mode; fail with its stderr if it fails."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_prune_overhead_quick(tmp_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    methods = "das,snapkv,hae,retentive_kv"
    run_quick("prune_overhead.py", "--methods", methods, "--json", str(out_json), "--markdown", str(out_md))
    data = json.loads(out_json.read_text())
    (result,) = data["results"]
    (row,) = result["runs"]
    assert row["prefill_seconds"] > 0 and set(row["methods"]) == set(methods.split(","))
    assert all(m["overhead_ratio"] >= 0 for m in row["methods"].values())
    assert "| frames |" in out_md.read_text()


def test_session_store_quick(tmp_path, redis_server, redis_cluster):
    out_json, out_md = tmp_path / "s.json", tmp_path / "s.md"
    run_quick(
        "session_store.py", "--redis-url", redis_server.url, "--cluster-url", redis_cluster.url,
        "--json", str(out_json), "--markdown", str(out_md),
    )  # fmt: skip
    data = json.loads(out_json.read_text())
    (result,) = data["results"]
    rows = {row["method"]: row for row in result["runs"]}
    assert set(rows) == {"full", "das"}
    assert rows["das"]["stored_bytes"] < rows["full"]["stored_bytes"]
    assert all(row["ttft_redis_ms"] > 0 and row["redis_get_MBps"] > 0 for row in rows.values())
    stored = {(row["target"], row["tokens"]): row for row in data["throughput"]["rows"]}
    assert {target for target, _ in stored} == {"redis", "cluster"} and len(stored) == 4  # 1 and 10 MiB each
    for row in stored.values():
        assert row["bytes"] >= row["tokens"] * data["throughput"]["shape"]["bytes_per_token"]
        assert row["save_vs_raw_chunk"] > 0 and row["load_vs_raw_chunk"] > 0 and row["raw_same"]["get_MiBps"] > 0
    assert "| target | record |" in out_md.read_text()


def test_decode_quick(tmp_path):
    out_json, out_md, plots = tmp_path / "d.json", tmp_path / "d.md", tmp_path / "plots"
    run_quick(
        "decode.py", "--methods", "das,hae,retentive_kv", "--budgets", "0.2",
        "--json", str(out_json), "--markdown", str(out_md), "--plots", str(plots),
    )  # fmt: skip
    (result,) = json.loads(out_json.read_text())["results"]
    (run,) = result["runs"]
    full, das = run["configs"]["full@1"], run["configs"]["das@0.2"]
    assert das["kv_bytes"] < full["kv_bytes"] and das["sessions_in_kv_budget"] > full["sessions_in_kv_budget"]
    assert all(row["decode"]["2"]["tokens_per_second"] > 0 for row in run["configs"].values())
    assert {"hae@0.2", "retentive_kv@0.2"} <= set(run["configs"])
    assert "| frames | config |" in out_md.read_text() and list(plots.glob("*.png"))


def test_long_video_quick(tmp_path):
    out_json, out_md, plots = tmp_path / "l.json", tmp_path / "l.md", tmp_path / "plots"
    run_quick("long_video.py", "--json", str(out_json), "--markdown", str(out_md), "--plots", str(plots))
    data = json.loads(out_json.read_text())
    memory = {(r["config"], r["frames"]): r for r in data["memory"]}
    assert memory[("chunked das cap", 32)]["kv_peak_bytes"] == memory[("chunked das cap", 16)]["kv_peak_bytes"]
    assert memory[("one-shot full", 32)]["kv_peak_bytes"] > memory[("one-shot full", 16)]["kv_peak_bytes"]
    assert memory[("chunked das 20%", 32)]["chunks"] > 1 == memory[("one-shot das 20%", 32)]["chunks"]
    one_shot, chunked = data["stall"]
    assert one_shot["chunk_frames"] == 0 and chunked["chunk_frames"] > 0 and chunked["gaps"] > 0
    assert {r["config"] for r in data["cost"]} == {"full", "das 20%"} and all(r["ratio"] > 0 for r in data["cost"])
    assert "**Stall**" in out_md.read_text() and list(plots.glob("long_video_memory_*.png"))


def test_long_video_stall_with_reduced_uploads_quick(tmp_path):
    """The stall phase with the uploads reduced before the language model: the uploads really are
    reduced (fewer visual tokens into the LLM than encoded), and answers still stream beside them."""
    out_json, out_md = tmp_path / "l.json", tmp_path / "l.md"
    args = ["--phases", "stall", "--upload-reduction", "evs:0.5", "--json", str(out_json), "--markdown", str(out_md)]
    run_quick("long_video.py", *args, "--plots", str(tmp_path / "plots"))
    rows = json.loads(out_json.read_text())["stall"]
    assert [r["upload_reduction"] for r in rows] == ["evs:0.5", "evs:0.5"]
    for row in rows:
        assert row["gaps"] > 0 and 0 < row["upload_visual_tokens_into_llm"] < row["upload_visual_tokens_encoded"]
    assert "uploads reduced by evs:0.5" in out_md.read_text()


def test_the_new_real_size_configurations_build_and_run_scaled_down(tmp_path):
    """Qwen3-VL-8B and the ~9B Qwen3.5 of ``bench/gpu.sh``: built on the meta device (no memory),
    their language models have the real models' size (vocabulary aside: the offline tokenizer's is
    512); shrunk in width and depth, they run the GPU benchmark's code path here."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from decode import MODELS
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from videoqa.worker.model.tiny import build_from_spec

    for name, family in (("qwen3-vl-8b", "qwen3_vl"), ("qwen3.5-9b", "qwen3_5")):
        with torch.device("meta"):
            model, _ = build_from_spec(MODELS[name], wide_init=False)
        body = sum(p.numel() for n, p in model.named_parameters() if ".visual." not in n)
        assert model.config.model_type == family and 6.5e9 < body < 7.5e9, (name, body)
    out_json = tmp_path / "d.json"
    run_quick(
        "decode.py", "--model", "qwen3-vl-8b", "--model", "qwen3.5-9b", "--scaled-down",
        "--methods", "das", "--budgets", "0.2", "--json", str(out_json),
    )  # fmt: skip
    results = {r["model"]: r for r in json.loads(out_json.read_text())["results"]}
    for result in results.values():
        (run,) = result["runs"]
        assert run["configs"]["das@0.2"]["kv_bytes"] < run["configs"]["full@1"]["kv_bytes"]
    assert "8 layers (6 linear attention)" in results["qwen3.5-9b"]["description"]


def test_reduction_quick(tmp_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    run_quick("reduction.py", "--json", str(out_json), "--markdown", str(out_md))
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from reduction import CONFIGS
    finally:
        sys.path.remove(str(ROOT / "bench"))
    data = json.loads(out_json.read_text())
    assert [run["frames"] for run in data["runs"]] == [8, 16]
    for run in data["runs"]:
        assert set(run["configs"]) == set(CONFIGS)
        for name, row in run["configs"].items():
            assert row["ttft_s"] > 0 and row["llm_prefill_s"] > 0 and row["vision_s"] > 0, (name, row)
            assert row["ttft_s"] >= row["llm_prefill_s"] and row["ttft_speedup"] > 0
            if name == "none":
                assert row["visual_after"] == row["visual_before"] == run["visual_tokens"]
            else:
                assert row["visual_after"] < row["visual_before"] == run["visual_tokens"], (name, row)
        assert run["configs"]["evs 50% + das 40%"]["kv_visual_kept"] < run["configs"]["evs 50%"]["visual_after"]
    assert "| config |" in out_md.read_text()


def test_a_benchmark_spec_reads_as_a_tiny_spec():
    """``--spec layers,hidden,heads,kv_heads[,mlp]``, shared by the benchmarks: the MLP defaults, other
    fields pass through, a malformed shape is refused."""
    from videoqa.worker.model.tiny import TinySpec

    full = TinySpec.from_shape("2,1536,12,2,8960", image_size=448)
    assert (full.family, full.layers, full.hidden, full.heads, full.kv_heads) == ("qwen2_vl", 2, 1536, 12, 2)
    assert (full.intermediate, full.image_size) == (8960, 448)
    assert TinySpec.from_shape("1,64,4,2", "qwen3_vl").intermediate is None
    with pytest.raises(ValueError, match="layers,hidden"):
        TinySpec.from_shape("2,1536,12")
