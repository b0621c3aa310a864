"""The method ranking under ``videoqa eval``'s table: bounds first and last, shares of full, spread."""

from __future__ import annotations

from videoqa.lab.harness import BUCKETS, Row, markdown, summarize
from videoqa.lab.ranking import ranking


def _rows(method: str, budget: float, correct: list[bool], mode: str = "agnostic") -> list[Row]:
    needles = (0.1, 0.3, 0.6, 0.9)
    return [
        Row(f"s{i}", "needle", needles[i % 4], method, budget, mode, "x" if ok else "y", "x", ok, 10, 1)
        for i, ok in enumerate(correct)
    ]


def test_bounds_frame_the_methods_ranked_by_accuracy_at_20_percent():
    rows = _rows("full", 1.0, [True] * 7 + [False])  # 0.875
    rows += _rows("random", 0.2, [True, False] * 4) + _rows("random", 0.1, [False] * 8)
    rows += _rows("csp", 0.2, [True] * 4 + [False] * 4) + _rows("csp", 0.1, [True] * 2 + [False] * 6)
    rows += _rows("das", 0.2, [True] * 6 + [False] * 2) + _rows("das", 0.1, [True] * 5 + [False] * 3)
    rows += _rows("oracle", 0.2, [True] * 7 + [False]) + _rows("oracle", 0.1, [True] * 7 + [False])
    table = ranking(summarize(rows), BUCKETS)
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [line.split(" | ")[0] for line in lines] == ["| oracle", "| **das**", "| csp", "| random"]
    assert table.startswith("**agnostic**, full cache 0.875:")
    das = lines[1].split(" | ")
    assert das[1:3] == ["0.750", "0.625"]  # 20%, 10%
    assert das[3] == "86% / 71%"  # 0.75 / 0.875, 0.625 / 0.875
    # s0..s7 cycle through the quartiles: das misses s6 (50-75%) and s7 (75-100%) at 20%
    assert das[4] == "1.00 / 1.00 / 0.50 / 0.50 (50)"
    assert das[5] == "— / — |"  # no evidence measured on these rows


def test_chunked_rows_and_modes_without_full_stay_out_and_the_table_reaches_the_report():
    rows = _rows("full", 1.0, [True] * 4) + _rows("das", 0.2, [True] * 4)
    chunked = _rows("das", 0.2, [False] * 4)
    for row in chunked:
        row.chunk_frames = 16
    no_full = _rows("das", 0.2, [True] * 4, mode="followup")
    summary = summarize(rows + chunked + no_full)
    table = ranking(summary, BUCKETS)
    assert "followup" not in table and "| **das** | 1.000 | 100% |" in table  # the chunked row is not ranked
    assert "## Methods between the bounds" in markdown(summary)
    assert ranking(summarize(_rows("das", 0.2, [True] * 4)), BUCKETS) == ""


def test_a_reduction_is_its_own_row_at_the_share_of_the_video_it_keeps():
    def reduced(method: str, budget: float, correct: list[bool], retention: float) -> list[Row]:
        rows = _rows(method, budget, correct)
        for row in rows:
            row.reduction, row.retention = "evs", retention
        return rows

    rows = _rows("full", 1.0, [True] * 4) + _rows("das", 0.5, [True] * 3 + [False]) + _rows("das", 0.2, [False] * 4)
    rows += reduced("evs@50%", 1.0, [True] * 4, 0.5) + reduced("evs@50%+das", 0.4, [True] * 2 + [False] * 2, 0.5)
    rows += reduced("evs@50%+oracle", 0.4, [True] * 4, 0.5) + reduced("evs@100%", 1.0, [True] * 4, 1.0)
    table = ranking(summarize(rows), BUCKETS)
    lines = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")]
    assert lines[0][:3] == ["| method", "50%", "20%"]  # evs@50% alone keeps 50%; das at 40% after it, 20%
    by_name = {cells[0]: cells for cells in lines[1:]}
    order = ["| evs@50%+oracle", "| evs@50%+das", "| **das**", "| evs@50%"]  # the bound, then by 20% (none: last)
    assert [cells[0] for cells in lines[1:]] == order
    assert by_name["| evs@50%"][1:3] == ["1.000", "—"] and by_name["| evs@50%+das"][1:3] == ["—", "0.500"]
    assert by_name["| **das**"][1:3] == ["0.750", "0.000"]  # evs@100% keeps all of it: no row
