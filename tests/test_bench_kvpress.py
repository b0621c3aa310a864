"""bench/kvpress_compare.py: its helpers, and its quick mode end to end.

Our half and the physical floor always run. The kvpress half runs only where the kvpress virtual
environment was already built (``python bench/kvpress_compare.py --setup-only``, a few minutes with
network access): the tests never build it, in CI or elsewhere, and skip that half with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "kvpress_compare.py"


def load_script():
    spec = importlib.util.spec_from_file_location("kvpress_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_quick(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out_json, out_md = tmp_path / "k.json", tmp_path / "k.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out_json), "--markdown", str(out_md), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out_json.read_text()), out_md.read_text()


def test_compression_ratio_leaves_the_same_entries():
    kc = load_script()
    for context in [7, 64, 97, 1057, 2081, 4129, 12345]:
        for kept in sorted({1, 2, context // 10, context // 5, context // 2, context - 1, context} - {0}):
            ratio = kc.kvpress_ratio(context, kept)
            assert 0 <= ratio < 1
            assert max(1, int(context * (1 - ratio))) == kept  # kvpress.utils.compute_n_kept
    with pytest.raises(ValueError):
        kc.kvpress_ratio(10, 11)


def test_agreement_helpers():
    kc = load_script()
    assert kc.until_eos([5, 6, 2, 7], {2}) == [5, 6, 2]
    assert kc.until_eos([5, 6], {2}) == [5, 6]
    assert kc.agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert kc.agreement([1, 2, 3], [1, 9, 3, 4]) == 0.5
    assert kc.first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert kc.first_divergence([1, 2], [1, 2, 3]) == 2
    assert kc.first_divergence([1, 2], [1, 2]) is None
    assert kc.jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)


def test_quick_our_half_and_floor(tmp_path):
    data, text = run_quick(tmp_path, "--kvpress", "no")
    assert data["machine"]["kvpress_skipped"] == "--kvpress no"
    assert data["machine"]["memory_bandwidth_bytes_per_s"] > 0
    (model,) = data["models"]
    (run,) = model["runs"]
    rows = {row["config"]: row for row in run["rows"]}
    assert set(rows) == {"ours full", "ours snapkv@0.2", "ours das@0.2"}
    full, snap, das = rows["ours full"], rows["ours snapkv@0.2"], rows["ours das@0.2"]
    assert max(snap["cache_entries"]) == max(das["cache_entries"]) < max(full["cache_entries"]) == run["context"]
    assert snap["kv_bytes"] < full["kv_bytes"]
    assert all(r["decode_ms_per_token"] > 0 and r["prefill_ms"] > 0 for r in rows.values())
    assert all(r["floor_ms"] > 0 and r["floor_bytes"] > run["weight_bytes_per_step"] for r in rows.values())
    assert snap["floor_ms"] < full["floor_ms"]  # less KV to read
    assert "| config |" in text and not run["targets"]


@pytest.mark.may_skip("the kvpress venv is built by hand, never by the tests or make test")
def test_quick_with_kvpress(tmp_path):
    kc = load_script()
    if not kc.venv_ready(kc.DEFAULT_VENV):
        reason = "CI: never built by the tests" if os.environ.get("CI") else "build it once with"
        pytest.skip(
            f"kvpress venv absent at {kc.DEFAULT_VENV} ({reason}: python bench/kvpress_compare.py --setup-only)"
        )
    data, text = run_quick(tmp_path, "--kvpress", "auto")
    assert data["machine"]["kvpress_side"]["transformers"].startswith("5.")
    (run,) = data["models"][0]["runs"]
    checks = run["inputs_equal"]
    assert checks["input_ids"] and checks["pixel_values_videos"] and checks["video_grid_thw"]
    rows = {row["config"]: row for row in run["rows"]}
    for name in ("kvpress full", "kvpress snapkv@0.2", "kvpress snapkv-mrope@0.2"):
        assert name in rows
    # same budget: the same number of cache entries per layer on both sides
    assert rows["kvpress snapkv-mrope@0.2"]["cache_entries"] == rows["ours snapkv@0.2"]["cache_entries"]
    pairs = {(c["a"], c["b"]): c for c in run["comparisons"]}
    same_model = pairs[("ours full", "kvpress full")]
    assert same_model["same_answer"] == 1.0 and same_model["first_logits_max_abs_diff"] < 1e-4
    # the M-RoPE adaptation scores exactly as the model's own (eager) attention weights
    assert pairs[("kvpress snapkv-mrope@0.2", "kvpress snapkv@0.2")]["kept"]["jaccard_mean"] == 1.0
    # our snapkv scores equal kvpress's inside the visual span (they differ only at its edges)
    kept = pairs[("ours snapkv@0.2", "kvpress snapkv-mrope@0.2")]["kept"]
    assert kept["score_max_diff_inside"] < 1e-5
    assert not run["kvpress_unmodified_sdpa"]["runs"]  # the finding: kvpress alone fails on M-RoPE
    assert len(run["targets"]) == 2 and "Target" in text


def test_a_checkpoint_is_read_from_the_commit_that_shipped_it(tmp_path):
    """kvpress's model class is Qwen2-VL's, so the compare reads the first demo checkpoint from the
    commit that last shipped it (``videoqa-demo-v1``): a folder's files as of a commit, byte for
    byte, later changes not seen, subfolders left out; a commit without that folder is refused."""
    kc = load_script()
    assert set(kc.MODELS["videoqa-demo-v1"]) >= {"commit", "checkpoint"}
    repo = tmp_path / "repo"
    (repo / "model" / "sub").mkdir(parents=True)

    def git(*args: str) -> str:
        identity = ["-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run(
            ["git", "-C", str(repo), *identity, *args], capture_output=True, text=True, check=True
        ).stdout

    git("init", "-q")
    (repo / "model" / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (repo / "model" / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (repo / "model" / "sub" / "x.txt").write_text("x")
    git("add", ".")
    git("commit", "-q", "-m", "v1")
    commit = git("rev-parse", "HEAD").strip()
    (repo / "model" / "config.json").write_text('{"model_type": "qwen3_vl"}')
    git("commit", "-q", "-am", "v2")
    out = kc.checkpoint_at(commit, "model", tmp_path / "v1", repo=repo)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert (out / "model.safetensors").read_bytes() == bytes(range(256)) * 4
    with pytest.raises(SystemExit, match="not in this clone's history"):
        kc.checkpoint_at(commit, "no/such/folder", tmp_path / "none", repo=repo)
