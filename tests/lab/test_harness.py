"""The eval harness runs end to end on a tiny split: tables, plots, and keep-all equals full."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from videoqa.client.cli import main as cli_main
from videoqa.lab.harness import Row, bucket, configurations, markdown, merge, parse_variant, summarize
from videoqa.lab.sample import Sample, is_correct, normalize
from videoqa.worker.types import MediaKind


def test_answer_matching():
    item = Sample("x", "ordering", "q?", "red", MediaKind.VIDEO, b"", 8, aliases=["red circle"])
    assert normalize("  The Red!\nmore") == "red"
    assert is_correct("Red.", item) and is_correct("red circle", item) and is_correct("red, I think", item)
    assert not is_correct("reddish", item) and not is_correct("blue", item) and not is_correct("", item)


def test_a_time_answer_is_right_within_its_tolerance():
    item = Sample("t", "time_when", "When does the red square appear?", "12", MediaKind.VIDEO, b"", 64, tolerance=1.0)
    assert is_correct("12", item) and is_correct("11 seconds", item) and is_correct("At 13.0 s", item)
    assert not is_correct("14", item) and not is_correct("10.5", item) and not is_correct("red", item)
    assert not is_correct("", item)


def test_summary_groups_and_checks_keep_all():
    rows = [
        Row("a", "needle", 0.1, "full", 1.0, "aware", "red", "red", True, 100, 10),
        Row("a", "needle", 0.1, "das", 1.0, "aware", "red", "red", True, 100, 10),
        Row("a", "needle", 0.1, "das", 0.2, "aware", "blue", "red", False, 40, 4),
        Row("b", "counting", None, "das", 0.2, "aware", "3", "3", True, 40, 4),
    ]
    summary = summarize(rows)
    das = next(c for c in summary["configs"] if c["method"] == "das" and c["budget"] == 0.2)
    assert das["accuracy"] == 0.5 and das["families"] == {"counting": 1.0, "needle": 0.0}
    assert das["needle_buckets"] == {"0-25%": 0.0} and bucket(1.0) == "75-100%"
    assert das["needle_bucket_samples"] == {"0-25%": 1}  # counting has no position
    assert "Samples per needle quartile (0-25%, 25-50%, 50-75%, 75-100%): 1 / 0 / 0 / 0" in markdown(summary)
    assert summary["keep_all_equals_full"] is True
    rows[1].prediction = "green"
    assert summarize(rows)["keep_all_equals_full"] is False


def test_eval_command_on_a_tiny_split(tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli_main(
        [
            "eval",
            "--count",
            "3",
            "--frames",
            "16",
            "--methods",
            "full,das",
            "--budgets",
            "1,0.2",
            "--out",
            str(out),
            "--max-new-tokens",
            "3",
            "--modes",
            "aware,agnostic,followup",
        ]
    )
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 3 * (3 + 6)  # full: 3 modes; das: 2 budgets × 3 modes
    assert data["summary"]["keep_all_equals_full"] is True
    assert "| method | budget |" in (out / "results.md").read_text()
    followup = [r for r in data["rows"] if r["mode"] == "followup"]
    assert len(followup) == 3 * 3 and all(r["cache_length"] > 0 for r in followup)
    for mode in ("aware", "agnostic", "followup"):
        with Image.open(out / f"accuracy_{mode}.png") as image:
            assert image.format == "PNG"


def test_configurations_expand_methods_variants_budgets_and_modes():
    from videoqa.worker.pruning.registry import describe_methods

    assert parse_variant("das_g2=das:gamma=2,alpha=0.25") == ("das_g2", "das", (("gamma", 2.0), ("alpha", 0.25)))
    assert parse_variant("plain=snapkv") == ("plain", "snapkv", ())
    for bad in ("das", "=das", "x=das:gamma"):
        try:
            parse_variant(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
    configs = configurations("all", ["das_g2=das:gamma=2"], "1,0.2", "aware,agnostic")
    names = {d.name for d in describe_methods()}
    assert {c.method for c in configs} == names
    assert [c for c in configs if c.method == "full"] and all(c.budget == 1 for c in configs if c.method == "full")
    variant = [c for c in configs if c.name == "das_g2"]
    assert len(variant) == 4 and all(c.params == (("gamma", 2.0),) for c in variant)
    assert len(configs) == (len(names) - 1) * 4 + 2 + 4
    assert {c.budget for c in configurations("full,das", [], "0.2", "aware") if c.method == "full"} == {1.0}
    assert {c.mode for c in configurations("das", [], "0.2", "followup,agnostic")} == {"followup", "agnostic"}
    try:
        configurations("das", [], "0.2", "sideways")
    except ValueError:
        pass
    else:
        raise AssertionError("an unknown mode was accepted")


def test_runs_split_over_processes_merge_into_one_report(tmp_path, capsys):
    from dataclasses import asdict

    full = Row("a", "needle", 0.1, "full", 1.0, "agnostic", "red", "red", True, 100, 10)
    first = [full, Row("a", "needle", 0.1, "das", 0.2, "agnostic", "red", "red", True, 40, 4)]
    second = [full, Row("a", "needle", 0.1, "h2o", 0.2, "agnostic", "blue", "red", False, 40, 4)]
    for name, rows in (("one", first), ("two", second)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows]}))
    out = tmp_path / "merged"
    assert cli_main(["eval", "--merge", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(out)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert sorted(r["method"] for r in merged["rows"]) == ["das", "full", "h2o"]  # full once
    by_method = {c["method"]: c["accuracy"] for c in merged["summary"]["configs"]}
    assert by_method == {"das": 1.0, "full": 1.0, "h2o": 0.0}
    assert (out / "accuracy_agnostic.png").is_file() and "| h2o | 20% |" in (out / "results.md").read_text()

    second[0] = Row("a", "needle", 0.1, "full", 1.0, "agnostic", "blue", "red", False, 100, 10)
    (tmp_path / "two" / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in second]}))
    try:
        merge([tmp_path / "one", tmp_path / "two"])
    except ValueError as error:
        assert "full@1/agnostic answered a differently" in str(error)
    else:
        raise AssertionError("two runs that disagree on full were merged")


@pytest.mark.parametrize("model_id", ["tiny-qwen2-vl", "tiny-qwen3-vl"])
def test_chunk_frames_zero_answers_as_the_one_shot_path_and_chunked_rows_carry_their_chunk(tiny_model, model_id):
    """``--chunk-frames 0`` is the harness as it was (one forward, then one prune: the same answers,
    cache and peak; the vision tower run once per sample, not per configuration, changes nothing,
    DeepStack included); a chunked configuration really runs in chunks, compresses as it goes (a
    lower peak) and labels its rows with its chunk size."""
    from videoqa.lab.harness import Config, evaluate, markdown
    from videoqa.lab.suite import generate
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.pruning.pipeline import PrunedPrefill
    from videoqa.worker.pruning.registry import build_method
    from videoqa.worker.types import GenerationParams, PruningSpec, SamplingSpec
    from videoqa.worker.video.decode import MediaDecoder

    lm = tiny_model(model_id)
    samples = generate("test", 2, (16,), size=56)
    modes = ("aware", "agnostic", "followup")
    configs = [Config(m, b, mode) for m, b in (("full", 1.0), ("das", 0.2), ("h2o", 0.2)) for mode in modes]
    rows = evaluate(lm, samples, configs, max_new_tokens=4)

    # the harness before chunking, verbatim: prefill(), prune(), then the turn's questions
    gen, greedy, old = ModelRunner(lm), GenerationParams(max_new_tokens=4), []
    with MediaDecoder() as decoder:
        for item in samples:
            spec = SamplingSpec(num_frames=item.num_frames, max_frames=item.num_frames, max_resolution=448)
            media = decoder.decode(item.kind, item.media, spec, 1.0)
            for config in configs:
                pipeline = PrunedPrefill(
                    gen, build_method(PruningSpec(config.method, {}, config.budget)), config.mode != "agnostic"
                )
                asked = {"aware": item.question, "agnostic": None, "followup": "What shape is in the last frame?"}
                state, logits = pipeline.prefill(lm.adapter.prepare(media, asked[config.mode]))
                peak = state.cache_bytes()
                pipeline.prune(state)
                kv = (state.cache_bytes(), state.cache_length, peak)
                if config.mode == "agnostic":
                    logits = gen.feed(state, gen.turn_input(state, item.question, first=True))
                elif config.mode == "followup":
                    list(gen.stream(state, logits, greedy))
                    logits = gen.feed(state, gen.turn_input(state, item.question, first=False))
                text = lm.tokenizer.decode(list(gen.stream(state, logits, greedy)), skip_special_tokens=True)
                old.append((item.sample_id, config.label, text, *kv))
    new = [(r.sample_id, r.label, r.prediction, r.kv_bytes, r.cache_length, r.peak_kv_bytes) for r in rows]
    assert new == old
    assert all(r.chunks == 1 and r.chunk_frames == 0 and r.max_visual_tokens == 0 for r in rows)

    chunked = evaluate(
        lm, samples, [Config(c.method, c.budget, c.mode, chunk_frames=4) for c in configs], max_new_tokens=4
    )
    tight = evaluate(
        lm, samples[:1], [Config("das", 0.2, "agnostic", chunk_frames=4, prefill_slack=1)], max_new_tokens=4
    )
    assert len(chunked) == len(rows)
    assert all(r.chunk_frames == 4 and r.prefill_slack == 2 and r.label.endswith("/chunk4/slack2") for r in chunked)
    assert all(r.chunks == 4 for r in chunked)  # 16 frames, 4 a chunk (two temporal patches)
    one_shot = {(r.sample_id, r.label): r for r in rows}
    for r in chunked:
        before = one_shot[(r.sample_id, r.label.removesuffix("/chunk4/slack2"))]
        if r.method == "das":  # compressed after every chunk: never the whole video's cache at once
            assert r.peak_kv_bytes < before.peak_kv_bytes and r.kv_bytes == before.kv_bytes
        else:  # full keeps everything, h2o prunes once at the end: the whole video is cached first
            assert r.peak_kv_bytes == before.peak_kv_bytes
    # slack 1 keeps the budget between chunks, 2 (the worker's default) twice that: a lower peak
    (loose,) = [r for r in chunked if r.sample_id == tight[0].sample_id and r.label == "das@0.2/agnostic/chunk4/slack2"]
    assert tight[0].label == "das@0.2/agnostic/chunk4/slack1" and tight[0].peak_kv_bytes < loose.peak_kv_bytes
    summary = summarize(rows + chunked)
    configs_out = {(c["method"], c["mode"], c["chunk_frames"]) for c in summary["configs"]}
    assert ("das", "agnostic", 4) in configs_out and ("das", "agnostic", 0) in configs_out
    assert summary["keep_all_equals_full"] is None  # no method other than full at budget 1
    table = markdown(summary)
    assert "| chunk frames |" in table and "| das | 20% | agnostic | 4 | 2 |" in table
    assert "chunk frames" not in markdown(summarize(rows))  # one chunk size: the old table


def test_chunks_and_caps_multiply_the_grid_and_old_rows_still_load(tmp_path):
    configs = configurations("full,das,h2o", [], "0.2", "agnostic,followup", "0,16", "0,26")
    labels = {c.label for c in configs}
    assert "full@1/agnostic/chunk16/slack2" in labels and "das@0.2/followup/chunk16/slack2/cap26" in labels
    assert "das@0.2/agnostic" in labels and "h2o@0.2/agnostic/chunk16/slack2" in labels
    assert not [c for c in configs if c.max_visual_tokens and c.method in ("full", "h2o")]  # they cannot hold a cap
    assert len(configs) == 2 * 2 + 2 * 2 * 2 + 2 * 2  # full, das (chunk × cap), h2o (chunk) per mode
    assert configurations("das", [], "0.2", "agnostic") == configurations("das", [], "0.2", "agnostic", "0", "0")
    slacks = configurations("full,das", [], "0.2", "agnostic", "0,16", "0", "1,2")
    assert sorted(c.label for c in slacks) == [
        "das@0.2/agnostic",
        "das@0.2/agnostic/chunk16/slack1",
        "das@0.2/agnostic/chunk16/slack2",
        "full@1/agnostic",
        "full@1/agnostic/chunk16/slack1",  # keeps everything: one slack is enough
    ]
    try:
        configurations("das", [], "0.2", "agnostic", "-8")
    except ValueError:
        pass
    else:
        raise AssertionError("a negative chunk size was accepted")

    old = {
        "sample_id": "a",
        "family": "needle",
        "needle": 0.1,
        "method": "das",
        "budget": 0.2,
        "mode": "agnostic",
        "prediction": "red",
        "answer": "red",
        "correct": True,
        "kv_bytes": 40,
        "cache_length": 4,
    }
    (tmp_path / "results.json").write_text(json.dumps({"rows": [old, dict(old, chunk_frames=16, correct=False)]}))
    rows = merge([tmp_path])
    assert [(r.chunk_frames, r.max_visual_tokens, r.correct) for r in rows] == [(0, 0, True), (16, 0, False)]
    assert [c["accuracy"] for c in summarize(rows)["configs"]] == [1.0, 0.0]  # two configurations


def test_the_harness_runs_the_new_families(tmp_path):
    """Qwen3-VL and the hybrid Qwen3.5 through the quality harness, one-shot and chunked (their
    random weights answer nonsense; what is checked is that every configuration runs and keep-all
    answers as full)."""
    for model in ("tiny-qwen3-vl", "tiny-qwen3.5"):
        out = tmp_path / model
        argv = ["eval", "--suite", "v1", "--model", model, "--count", "2", "--frames", "8"]
        argv += ["--methods", "full,das,snapkv"]
        argv += ["--budgets", "1,0.25", "--modes", "agnostic,followup", "--chunk-frames", "0,4"]
        assert cli_main([*argv, "--max-new-tokens", "2", "--out", str(out)]) == 0
        data = json.loads((out / "results.json").read_text())
        assert data["summary"]["keep_all_equals_full"] is True, model
        assert {(r["method"], r["budget"]) for r in data["rows"]} >= {("das", 0.25), ("snapkv", 0.25), ("full", 1.0)}
        assert all(r["cache_length"] > 0 for r in data["rows"])


def test_suite_v2_with_its_bounds_end_to_end(tmp_path):
    """``videoqa eval --suite v2``: every method placed between the oracle and random, the
    left-out-heads variant beside its method, keep-all answering as full, the report naming them."""
    out = tmp_path / "eval"
    argv = ["eval", "--suite", "v2", "--model", "tiny-qwen3-vl", "--count", "2", "--frames", "16"]
    argv += ["--methods", "full,oracle,random,das", "--budgets", "1,0.2", "--modes", "agnostic"]
    assert cli_main([*argv, "--leave-out-heads", "1:0", "--max-new-tokens", "2", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    labels = {(r["method"], r["budget"]) for r in data["rows"]}
    methods = ("oracle", "random", "das", "das-without-L1H0")
    assert labels == {("full", 1.0)} | {(m, b) for m in methods for b in (1.0, 0.2)}
    assert len(data["rows"]) == 2 * len(labels) and {r["sample_id"][:3] for r in data["rows"]} == {"v2-"}
    assert data["summary"]["keep_all_equals_full"] is True
    at_20 = [r for r in data["rows"] if r["budget"] == 0.2]
    assert len({r["cache_length"] for r in at_20 if r["method"] != "full"}) == 1  # one budget, one cache size
    report = (out / "results.md").read_text()
    assert all(f"| {m} |" in report for m in methods) and "evidence kept" in report
    kept = {(r["method"], r["budget"]): [] for r in data["rows"]}
    for r in data["rows"]:
        kept[r["method"], r["budget"]].append(r["evidence_kept"])
    assert all(v == 1.0 for key, values in kept.items() for v in values if key[1] == 1.0)
    assert kept["oracle", 0.2] == [1.0, 1.0] and sum(kept["random", 0.2]) < 2  # evidence <= 15% of the tokens
    assert all(0 <= v <= 1 for v in kept["das", 0.2])


def test_evidence_kept_is_unknown_where_a_method_keeps_no_slot_map(tmp_path):
    """``hae`` evicts from the cache without a per-layer slot map: its rows say the evidence kept
    is unknown (None, no column value), not 1.0, while a slot-map method's rows measure it."""
    out = tmp_path / "eval"
    argv = ["eval", "--suite", "v2", "--model", "tiny-qwen3-vl", "--count", "1", "--frames", "16"]
    argv += ["--methods", "full,hae,random", "--budgets", "0.2", "--modes", "agnostic", "--max-new-tokens", "1"]
    assert cli_main([*argv, "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["hae"]["evidence_kept"] is None and rows["hae"]["cache_length"] < rows["full"]["cache_length"]
    assert 0 <= rows["random"]["evidence_kept"] < 1


def test_suite_v2_time_families_through_the_harness(tmp_path, capsys):
    """``--families`` picks suite v2's time questions (opt-in); an unknown family is refused."""
    out = tmp_path / "eval"
    argv = ["eval", "--suite", "v2", "--model", "tiny-qwen3-vl", "--count", "2", "--frames", "16"]
    argv += ["--families", "time_at,time_when", "--methods", "full", "--budgets", "1", "--modes", "agnostic"]
    assert cli_main([*argv, "--max-new-tokens", "2", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert sorted(r["family"] for r in data["rows"]) == ["time_at", "time_when"]
    with pytest.raises(SystemExit, match="unknown time_of_day"):
        cli_main([*argv[:-6], "--families", "time_of_day", "--out", str(out)])


def test_reductions_multiply_the_grid_and_name_their_configurations():
    from videoqa.lab.harness import parse_reductions

    assert parse_reductions("none,evs:0.25,vidcom2:0.5") == [("", 1.0), ("evs", 0.25), ("vidcom2", 0.5)]
    for bad in ("evs", "evs:", "evs:x", ":0.5", "nope:0.5", "evs:1.5", "evs:0", ""):
        with pytest.raises(ValueError, match="--reductions"):
            parse_reductions(bad)
    configs = configurations("full,das", [], "1,0.4", "agnostic", reductions="none,evs:0.25,vidcom2:0.125")
    assert len(configs) == 3 * 3  # (full, das@1, das@0.4) × 3 reductions
    assert sorted(c.label for c in configs) == [
        "das@0.4/agnostic",
        "das@1/agnostic",
        "evs@25%+das@0.4/agnostic",
        "evs@25%+das@1/agnostic",
        "evs@25%@1/agnostic",  # the reduction alone: full's cache of what the reduction kept
        "full@1/agnostic",
        "vidcom2@12.5%+das@0.4/agnostic",
        "vidcom2@12.5%+das@1/agnostic",
        "vidcom2@12.5%@1/agnostic",
    ]
    plain = configurations("das", [], "0.2", "agnostic")
    assert plain == configurations("das", [], "0.2", "agnostic", reductions="none")
    rows = [
        Row("a", "needle", 0.1, "full", 1.0, "agnostic", "red", "red", True, 100, 10, llm_visual_tokens=128),
        Row("a", "needle", 0.1, "evs@50%", 1.0, "agnostic", "blue", "red", False, 60, 6, reduction="evs"),
        Row("a", "needle", 0.1, "evs@100%", 1.0, "agnostic", "red", "red", True, 100, 10, reduction="evs"),
    ]
    rows[1].retention, rows[1].llm_visual_tokens, rows[1].prefill_s, rows[1].prefill_total_s = 0.5, 64, 0.5, 1.5
    summary = summarize(rows)
    assert summary["keep_all_equals_full"] is True  # evs@50% answers otherwise: it keeps half, not all
    half = next(c for c in summary["configs"] if c["method"] == "evs@50%")
    assert (half["reduction"], half["retention"], half["llm_visual_tokens"]) == ("evs", 0.5, 64)
    assert (half["prefill_s"], half["prefill_total_s"]) == (0.5, 1.5)
    table = markdown(summary)
    assert "| KV bytes | LLM visual tokens | LLM prefill s | prefill s |" in table
    assert "| evs@50% | 100% | agnostic | 1 | 0.000 |" in table and "| 64 | 0.500 | 1.500 |" in table
    assert "LLM visual tokens" not in markdown(summarize(rows[:1]))  # no reduction: the old table


def test_reductions_end_to_end_on_suite_v2(tmp_path):
    """``--reductions none,evs:0.5,evs:1.0`` with full, das and the oracle: every configuration
    under every reduction; evs at 50% sends half the visual tokens into the language model; the
    evidence it dropped is not kept (the oracle under it keeps exactly what it left); evs at 100%
    answers exactly as no reduction."""
    out = tmp_path / "eval"
    argv = ["eval", "--suite", "v2", "--model", "tiny-qwen3-vl", "--count", "2", "--frames", "16"]
    argv += ["--methods", "full,das,oracle", "--budgets", "1,0.4", "--modes", "agnostic"]
    argv += ["--reductions", "none,evs:0.5,evs:1.0", "--max-new-tokens", "2", "--out", str(out)]
    assert cli_main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    rows = {(r["sample_id"], r["method"], r["budget"]): r for r in data["rows"]}
    samples = sorted({r["sample_id"] for r in data["rows"]})
    names = {(m, b) for _, m, b in rows}
    kv = {(m, b) for m in ("das", "oracle") for b in (1.0, 0.4)}
    assert names == {("full", 1.0), ("evs@50%", 1.0), ("evs@100%", 1.0)} | kv | {
        (f"evs@{share}%+{m}", b) for share in (50, 100) for m, b in kv
    }
    assert len(data["rows"]) == 2 * len(names) == 2 * 15
    assert data["summary"]["keep_all_equals_full"] is True
    for s in samples:
        plain, half, whole = rows[s, "full", 1.0], rows[s, "evs@50%", 1.0], rows[s, "evs@100%", 1.0]
        assert (half["reduction"], half["retention"], plain["reduction"], plain["retention"]) == ("evs", 0.5, "", 1.0)
        assert abs(half["llm_visual_tokens"] / plain["llm_visual_tokens"] - 0.5) < 0.05
        assert whole["llm_visual_tokens"] == plain["llm_visual_tokens"]
        assert whole["prediction"] == plain["prediction"] and whole["kv_bytes"] == plain["kv_bytes"]  # keep-all
        assert rows[s, "evs@100%+das", 0.4]["prediction"] == rows[s, "das", 0.4]["prediction"]
        # reduction and KV pruning compose: das at 40% of what evs at 50% left keeps 20% of the video
        assert rows[s, "evs@50%+das", 0.4]["cache_length"] < rows[s, "das", 0.4]["cache_length"]
        # the evidence evs dropped is lost to every method after it; the oracle keeps all that is left
        assert 0 <= half["evidence_kept"] <= 1 and plain["evidence_kept"] == whole["evidence_kept"] == 1.0
        assert rows[s, "evs@50%+oracle", 0.4]["evidence_kept"] == half["evidence_kept"]
        assert rows[s, "evs@100%+oracle", 0.4]["evidence_kept"] == 1.0
        assert rows[s, "evs@50%+das", 0.4]["evidence_kept"] <= half["evidence_kept"]
    assert all(0 <= r["evidence_kept"] <= 1 for r in data["rows"])
    assert all(0 < r["prefill_s"] <= r["prefill_total_s"] for r in data["rows"])
    report = (out / "results.md").read_text()
    assert "| LLM visual tokens | LLM prefill s | prefill s |" in report and "| evs@50%+das | 40% |" in report
    ranked = report.split("## Methods between the bounds")[1]
    lines = [line.split(" | ") for line in ranked.splitlines() if line.startswith("| ")]
    # placed at the share of the video's tokens kept: evs@50% alone at 50%, with das at 40% at 20%
    assert lines[0][:4] == ["| method", "50%", "40%", "20%"]
    alone = next(cells for cells in lines if cells[0] == "| evs@50%")
    assert alone[1] != "—" and alone[2:4] == ["—", "—"]
    composed = next(cells for cells in lines if cells[0] == "| evs@50%+das")
    assert composed[1] != "—" and composed[2] == "—" and composed[3] != "—"
    assert {cells[0] for cells in lines[1:4]} == {"| oracle", "| evs@50%+oracle", "| evs@100%+oracle"}  # bounds first
